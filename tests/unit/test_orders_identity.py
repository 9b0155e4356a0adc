"""Who is who: apprentices' pseudonymous codes (random, never from the name) and maîtres' hashed passwords."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from copeau.contract import APPRENTICE_CODE_PATTERN, EventContext
from orders import catalog
from orders.database import make_engine, session_factory
from orders.errors import DuplicateBadge, DuplicateLogin, InvalidCredentials, InvalidValue
from orders.migrate import upgrade
from orders.passwords import hash_password, verify_password
from orders.pseudonyms import ALPHABET, new_code

NOW = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)


def test_codes_match_the_event_contract_and_avoid_look_alikes() -> None:
    rng = random.Random(7)
    codes = [new_code(choice=rng.choice) for _ in range(2000)]
    assert all(re.match(APPRENTICE_CODE_PATTERN, code) for code in codes)
    assert not set("".join(c.removeprefix("AP-") for c in codes)) & set("01ILO")
    assert set("".join(c.removeprefix("AP-") for c in codes)) <= set(ALPHABET)
    EventContext(apprentice=codes[0])  # accepted by the contract as is


def test_a_taken_code_is_never_given_again() -> None:
    rng = random.Random(1)
    first = new_code(choice=random.Random(1).choice)
    # The same seeded draws would give `first` again; it is taken, so the next draw is used.
    second = new_code({first}, choice=rng.choice)
    assert second != first


def test_codes_do_not_come_from_names(tmp_path: Path) -> None:
    """Same person's name, same draws: the code depends on the draws only, and two Léa Martin differ."""
    url = f"sqlite:///{tmp_path / 'a.sqlite'}"
    upgrade(url)
    engine = make_engine(url)
    with session_factory(engine).begin() as db:
        lea = catalog.create_apprentice(db, first_name="Léa", last_name="Martin", badge="0001", now=NOW)
        homonym = catalog.create_apprentice(db, first_name="Léa", last_name="Martin", badge="0002", now=NOW)
        assert lea.code != homonym.code
        for apprentice in (lea, homonym):
            letters = set(apprentice.code.removeprefix("AP-"))
            assert apprentice.code not in ("AP-LEA", "AP-MARTIN")
            assert re.match(APPRENTICE_CODE_PATTERN, apprentice.code)
            assert letters <= set(ALPHABET)
        seeded = catalog.create_apprentice(db, first_name="Zoé", last_name="Roux", badge="0003", now=NOW,
                                           choice=random.Random(5).choice)
        other = catalog.create_apprentice(db, first_name="Adam", last_name="Blanc", badge="0004", now=NOW,
                                          choice=random.Random(6).choice)
        assert seeded.code == new_code(choice=random.Random(5).choice)
        assert other.code == new_code(choice=random.Random(6).choice)
        with pytest.raises(DuplicateBadge):
            catalog.create_apprentice(db, first_name="X", last_name="Y", badge="0001", now=NOW)
        with pytest.raises(InvalidValue) as info:
            catalog.create_apprentice(db, first_name="X", last_name="Y", badge="CMD/10", now=NOW)
        assert info.value.message("fr") == "Badge : de 3 à 64 lettres, chiffres, « - », « _ » ou « . »"
    engine.dispose()


def test_password_hash_round_trip() -> None:
    stored = hash_password("un mot de passe long")
    assert stored.startswith("scrypt$16384$8$1$")
    assert "un mot de passe long" not in stored
    assert verify_password("un mot de passe long", stored)
    assert not verify_password("un mot de passe lonG", stored)
    assert hash_password("un mot de passe long") != stored  # a fresh salt each time


def test_cheaper_parameters_travel_with_the_hash() -> None:
    stored = hash_password("secret-de-test", n=2**10, r=8, p=1)
    assert stored.split("$")[1] == "1024"
    assert verify_password("secret-de-test", stored)


@pytest.mark.parametrize("stored", ["", "plain", "md5$x$y", "scrypt$1$2$3$!!$!!", "scrypt$3$8$1$AAAA$AAAA"])
def test_malformed_hashes_never_verify(stored: str) -> None:
    assert not verify_password("anything", stored)


def test_authentication(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.sqlite'}"
    upgrade(url)
    engine = make_engine(url)
    with session_factory(engine).begin() as db:
        catalog.create_maitre(db, login="mdupont", display_name="M. Dupont", password="tournage-2026", now=NOW)
        assert catalog.authenticate(db, login="mdupont", password="tournage-2026").display_name == "M. Dupont"
        with pytest.raises(InvalidCredentials):
            catalog.authenticate(db, login="mdupont", password="fraisage-2026")
        with pytest.raises(InvalidCredentials) as info:
            catalog.authenticate(db, login="personne", password="tournage-2026")
        assert str(info.value) == "Identifiant ou mot de passe incorrect."
        with pytest.raises(DuplicateLogin):
            catalog.create_maitre(db, login="mdupont", display_name="Autre", password="tournage-2027", now=NOW)
        with pytest.raises(InvalidValue):
            catalog.create_maitre(db, login="court", display_name="Court", password="court", now=NOW)
    engine.dispose()
