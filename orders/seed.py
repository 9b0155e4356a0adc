"""Demo data for `make demo`: a few apprentices, a maître, two customers and three orders whose operations fit
the demo workshop (`config/workshop.yaml`: mills, and lathes since OPC UA; one operation is for a lathe).
Idempotent: running it again adds nothing.

The names are invented. The maître's password comes from COPEAU_DEMO_PASSWORD, else it is the demo's
well-known one (`DEMO_PASSWORD`); that is acceptable for a demo on loopback only, never for a real school.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from orders import catalog
from orders.models import Apprentice, Maitre, Order

DEMO_PASSWORD = "copeau-demo"  # the demo's documented password (see the module docstring)
DEMO_LOGIN = "maitre"

APPRENTICES = [  # first name, last name, badge (what the USB reader types)
    ("Léa", "Martin", "0004521987"),
    ("Yanis", "Benali", "0004521988"),
    ("Chloé", "Durand", "0004521989"),
    ("Mathis", "Petit", "0004521990"),
]


def demo_order_file(today: date) -> str:
    """The demo's orders as an order file (the same format a school imports), due 3, 6 and 10 days from `today`."""
    d1, d2, d3 = (today + timedelta(days=n) for n in (3, 6, 10))
    return "\n".join([
        "commande;client;référence pièce;quantité;échéance;opération;machine;temps de cycle (s);réglage (s)",
        f"CMD-DEMO-001;Mécanique Durand SARL;BRIDE-45;40;{d1.isoformat()};10;fraiseuse;7,5;600",
        f"CMD-DEMO-001;Mécanique Durand SARL;BRIDE-45;40;{d1.isoformat()};20;fraiseuse;6;300",
        f"CMD-DEMO-002;Hydraulique du Rhône;PLATINE-12;120;{d2.isoformat()};10;fraiseuse;6,5;900",
        f"CMD-DEMO-003;Mécanique Durand SARL;SUPPORT-7;60;{d3.isoformat()};10;fraiseuse;8;600",
        f"CMD-DEMO-003;Mécanique Durand SARL;SUPPORT-7;60;{d3.isoformat()};20;tour;9;600",
        "",
    ])


@dataclass(frozen=True)
class DemoData:
    apprentices: dict[str, str]  # badge → pseudonymous code
    orders: list[str]
    maitre_login: str
    created: bool  # False when the data was already there


def seed_demo(session: Session, *, today: date | None = None, now: datetime | None = None) -> DemoData:
    """Add the demo data if it is not there yet (the caller commits). Returns what the demo can print."""
    now = now or datetime.now(UTC)
    today = today or now.date()
    created = False
    for first, last, badge in APPRENTICES:
        if catalog.apprentice_by_badge(session, badge=badge) is None:
            catalog.create_apprentice(session, first_name=first, last_name=last, badge=badge, now=now)
            created = True
    if session.scalar(select(Order.id).where(Order.reference == "CMD-DEMO-001")) is None:
        catalog.import_orders(session, data=demo_order_file(today), now=now)
        created = True
    if session.scalar(select(Maitre.id).where(Maitre.login == DEMO_LOGIN)) is None:
        catalog.create_maitre(session, login=DEMO_LOGIN, display_name="Maître de démonstration",
                              password=os.environ.get("COPEAU_DEMO_PASSWORD") or DEMO_PASSWORD, now=now)
        created = True
    session.flush()
    badges = {badge for _, _, badge in APPRENTICES}
    codes = {a.badge: a.code for a in session.scalars(select(Apprentice).where(Apprentice.badge.in_(badges)))}
    orders = list(session.scalars(select(Order.reference).where(Order.reference.like("CMD-DEMO-%"))
                                  .order_by(Order.reference)))
    return DemoData(apprentices=codes, orders=orders, maitre_login=DEMO_LOGIN, created=created)
