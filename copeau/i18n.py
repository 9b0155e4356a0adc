"""French first, English available: one catalogue for what a person at the school reads.

The language comes from `COPEAU_LANG` (`fr` by default, or `en`).
"""

from __future__ import annotations

import os

CATALOGUE: dict[str, dict[str, str]] = {
    "config.invalid": {
        "fr": "Configuration invalide ({n} problème(s)) :",
        "en": "Invalid configuration ({n} problem(s)):",
    },
    "config.ok": {
        "fr": "Configuration valide : {file} — site « {site} », {machines} machine(s).",
        "en": "Configuration is valid: {file} — site “{site}”, {machines} machine(s).",
    },
    "services.port_busy": {
        "fr": (
            "Le port {port} ({what}) est déjà utilisé sur {host}. Choisissez-en un autre dans {config} "
            "(champ {field}), ou arrêtez le programme qui l'occupe (voir : ss -ltnp | grep {port})."
        ),
        "en": (
            "Port {port} ({what}) is already in use on {host}. Choose another one in {config} "
            "(field {field}), or stop the program that holds it (see: ss -ltnp | grep {port})."
        ),
    },
    "services.missing_binary": {
        "fr": "{binary} est introuvable. Lancez « make demo » ou « make test » : ils l'installent (apt-get).",
        "en": "{binary} was not found. Run `make demo` or `make test`: they install it (apt-get).",
    },
    "services.failed": {
        "fr": "{what} n'a pas démarré ({reason}). Journal : {log}",
        "en": "{what} did not start ({reason}). Log: {log}",
    },
    "services.started": {
        "fr": "{what} démarré sur {host}:{port} (journal : {log})",
        "en": "{what} started on {host}:{port} (log: {log})",
    },
    # Production profile (copeau/security.py, copeau/services.py, `copeau security …`). Never a secret's value.
    "security.influx_admin_created": {
        "fr": "InfluxDB {url} : administrateur « {user} » créé (premier démarrage).",
        "en": "InfluxDB {url}: administrator “{user}” created (first start).",
    },
    "security.influx_admin_refused": {
        "fr": (
            "InfluxDB {url} refuse l'administrateur « {user} » (HTTP {status}) : son mot de passe n'est pas celui "
            "qu'InfluxDB connaît. Remettez l'ancien dans son fichier secret, ou changez-le dans InfluxDB "
            "(SET PASSWORD FOR …)."
        ),
        "en": (
            "InfluxDB {url} refuses the administrator “{user}” (HTTP {status}): its password is not the one "
            "InfluxDB knows. Put the old one back in its secret file, or change it in InfluxDB (SET PASSWORD FOR …)."
        ),
    },
    "security.influx_failed": {
        "fr": "InfluxDB {url} : « {what} » a échoué : {error}",
        "en": "InfluxDB {url}: “{what}” failed: {error}",
    },
    "security.influx_no_auth": {
        "fr": (
            "InfluxDB {url} répond sans identifiants (HTTP {status}) : mettez auth-enabled = true dans la section "
            "[http] de sa configuration, puis redémarrez-le."
        ),
        "en": (
            "InfluxDB {url} answers without credentials (HTTP {status}): set auth-enabled = true in the [http] "
            "section of its configuration, then restart it."
        ),
    },
    "security.influx_ready": {
        "fr": "InfluxDB {url} : authentification exigée ; base « {db} » ; comptes prêts : {users}.",
        "en": "InfluxDB {url}: authentication required; database “{db}”; accounts ready: {users}.",
    },
    "security.demo_profile": {
        "fr": "services.profile vaut « demo » : pas de comptes à préparer (docs/configuration.md, profil production).",
        "en": "services.profile is “demo”: no accounts to prepare (see docs/configuration.md, production profile).",
    },
    "security.demo_only": {
        "fr": "copeau demo ne tourne qu'avec le profil demo (services.profile: demo).",
        "en": "copeau demo runs with the demo profile only (services.profile: demo).",
    },
    "security.secret_created": {
        "fr": "Secret créé : {path} (lisible par son propriétaire seulement ; valeur jamais affichée)",
        "en": "Secret created: {path} (readable by its owner only; the value is never shown)",
    },
    "security.no_secret_to_create": {
        "fr": "Aucun secret à créer : chaque fichier de secret (file:) des comptes existe déjà.",
        "en": "No secret to create: every account's secret file (file:) exists already.",
    },
    "security.mosquitto_written": {
        "fr": (
            "Écrits : {files}. Donnez-les à mosquitto (propriétaire ou groupe mosquitto, mode 0640), puis "
            "redémarrez-le (systemctl restart mosquitto)."
        ),
        "en": (
            "Written: {files}. Give them to mosquitto (owner or group mosquitto, mode 0640), then restart it "
            "(systemctl restart mosquitto)."
        ),
    },
    "demo.header": {
        "fr": "Copeau — démonstration : atelier simulé « {site} » ({machines} machines)",
        "en": "Copeau — demo: simulated workshop “{site}” ({machines} machines)",
    },
    "demo.stop_hint": {
        "fr": "Ctrl-C pour arrêter proprement.",
        "en": "Press Ctrl-C to stop cleanly.",
    },
    "demo.stop_after": {
        "fr": "Arrêt automatique dans {seconds} s (DEMO_SECONDS).",
        "en": "Stopping by itself in {seconds} s (DEMO_SECONDS).",
    },
    "demo.table_header": {
        "fr": "{time}  {machine:<13} {protocol:<7} {state:<10} {parts:>7} {scrap:>7} {cycle:>14}",
        "en": "{time}  {machine:<13} {protocol:<7} {state:<10} {parts:>7} {scrap:>7} {cycle:>14}",
    },
    "demo.col.machine": {"fr": "machine", "en": "machine"},
    "demo.col.state": {"fr": "état", "en": "state"},
    "demo.col.protocol": {"fr": "liaison", "en": "link"},
    "demo.col.scrap": {"fr": "rebuts", "en": "scrap"},
    "demo.col.parts": {"fr": "pièces", "en": "parts"},
    "demo.col.cycle": {"fr": "dernier cycle", "en": "last cycle"},
    "demo.query_hint": {
        "fr": "Les mêmes chiffres dans InfluxDB ({url}, base « {db} ») :",
        "en": "The same numbers in InfluxDB ({url}, database “{db}”):",
    },
    "demo.curl_hint": {
        "fr": "  (par exemple : curl -sG {url}/query --data-urlencode db={db} --data-urlencode 'q=SELECT …')",
        "en": "  (for example: curl -sG {url}/query --data-urlencode db={db} --data-urlencode 'q=SELECT …')",
    },
    "demo.web": {
        "fr": "Bornes et pages des maîtres : {url} (connexion « {login} », mot de passe « {password} »). Bornes :",
        "en": "Kiosks and maîtres' pages: {url} (login “{login}”, password “{password}”). Kiosks:",
    },
    "demo.stopping": {"fr": "Arrêt en cours…", "en": "Stopping…"},
    "demo.check_ok": {
        "fr": "{machine} : {stored} pièces dans InfluxDB, {truth} dans la vérité terrain ({file}) — identique ✔",
        "en": "{machine}: {stored} parts in InfluxDB, {truth} in the ground truth ({file}) — identical ✔",
    },
    "demo.check_bad": {
        "fr": "{machine} : {stored} pièces dans InfluxDB mais {truth} dans la vérité terrain ({file}) ✘",
        "en": "{machine}: {stored} parts in InfluxDB but {truth} in the ground truth ({file}) ✘",
    },
    "demo.done": {"fr": "Démonstration terminée.", "en": "Demo finished."},
    "state.offline": {"fr": "hors ligne", "en": "offline"},
    "state.idle": {"fr": "à l'arrêt", "en": "idle"},
    "state.running": {"fr": "en cycle", "en": "running"},
    "state.alarm": {"fr": "en alarme", "en": "alarm"},
    "state.unknown": {"fr": "inconnu", "en": "unknown"},
    # -- orders, kiosk and web service (issue #4; see docs/orders-and-kiosk.md) ------------------------------
    "machine_kind.lathe": {"fr": "tour", "en": "lathe"},
    "machine_kind.mill": {"fr": "fraiseuse", "en": "mill"},
    "machine_kind.lathe.a": {"fr": "un tour", "en": "a lathe"},
    "machine_kind.mill.a": {"fr": "une fraiseuse", "en": "a mill"},
    "orders.error": {"fr": "Erreur.", "en": "Error."},
    "orders.unknown_machine": {
        "fr": "La machine « {machine} » n'existe pas dans la configuration de l'atelier.",
        "en": "Machine “{machine}” is not in the workshop configuration.",
    },
    "orders.unknown_badge": {
        "fr": "Badge inconnu ({badge}). Demandez à votre maître professionnel de l'enregistrer.",
        "en": "Unknown badge ({badge}). Ask your maître professionnel to register it.",
    },
    "orders.too_many_attempts": {
        "fr": "Trop d'essais avec des badges inconnus. Attendez {retry_after_s} s, puis réessayez.",
        "en": "Too many tries with unknown badges. Wait {retry_after_s} s, then try again.",
    },
    "orders.unknown_job": {
        "fr": "Fiche de travail « {job} » inconnue. Vérifiez le numéro de commande et d'opération.",
        "en": "Unknown job card “{job}”. Check the order and operation numbers.",
    },
    "orders.order_closed": {
        "fr": "La commande {order} est close : on ne peut plus y travailler.",
        "en": "Order {order} is closed: no more work can be done on it.",
    },
    "orders.not_identified": {
        "fr": "Scannez d'abord votre badge, puis la fiche de travail.",
        "en": "Scan your badge first, then the job card.",
    },
    "orders.wrong_machine": {
        "fr": "Le travail {job} se fait sur {expected_kind}, et {machine} est {machine_kind}. Rien n'a démarré.",
        "en": "Job {job} is done on {expected_kind}, and {machine} is {machine_kind}. Nothing was started.",
    },
    "orders.machine_busy": {
        "fr": "{machine} est déjà occupée (travail {job}). Il faut d'abord terminer ce travail.",
        "en": "{machine} is already busy (job {job}). That job must be finished first.",
    },
    "orders.no_open_session": {
        "fr": "Aucun travail n'est en cours sur {machine}.",
        "en": "No job is running on {machine}.",
    },
    "orders.session_not_found": {
        "fr": "La session n° {session_id} n'existe pas.",
        "en": "Session no. {session_id} does not exist.",
    },
    "orders.already_declared": {
        "fr": "La session n° {session_id} a déjà sa déclaration.",
        "en": "Session no. {session_id} already has its declaration.",
    },
    "orders.declaration_too_large": {
        "fr": (
            "Vous déclarez {declared} pièce(s), mais la machine n'en a compté que {made} pendant ce travail. "
            "Corrigez les nombres."
        ),
        "en": "You declare {declared} part(s), but the machine counted only {made} during this job. Fix the numbers.",
    },
    "orders.unknown_scrap_reason": {
        "fr": "Motif de rebut « {reason} » inconnu.",
        "en": "Unknown scrap reason “{reason}”.",
    },
    "orders.counts_unavailable": {
        "fr": "Les compteurs de pièces sont indisponibles pour l'instant (InfluxDB). Réessayez dans un moment.",
        "en": "Part counts are unavailable for now (InfluxDB). Try again in a moment.",
    },
    "orders.invalid_value": {"fr": "{field} : {problem}", "en": "{field}: {problem}"},
    "orders.duplicate_badge": {
        "fr": "Le badge {badge} est déjà attribué à un autre apprenti.",
        "en": "Badge {badge} already belongs to another apprentice.",
    },
    "orders.duplicate_login": {
        "fr": "L'identifiant « {login} » est déjà pris.",
        "en": "Login “{login}” is already taken.",
    },
    "orders.duplicate_scrap_reason": {
        "fr": "Le motif de rebut « {reason} » existe déjà.",
        "en": "Scrap reason “{reason}” already exists.",
    },
    "orders.invalid_credentials": {
        "fr": "Identifiant ou mot de passe incorrect.",
        "en": "Wrong login or password.",
    },
    "orders.import_rejected": {
        "fr": "Le fichier n'a pas été importé : {n} erreur(s). Aucune commande n'a été ajoutée.",
        "en": "The file was not imported: {n} error(s). No order was added.",
    },
    "orders.value.required": {"fr": "obligatoire", "en": "required"},
    "orders.value.too_long": {"fr": "{max} caractères au plus", "en": "at most {max} characters"},
    "orders.value.badge_form": {
        "fr": "de 3 à 64 lettres, chiffres, « - », « _ » ou « . »",
        "en": "3 to 64 letters, digits, “-”, “_” or “.”",
    },
    "orders.value.password_short": {
        "fr": "{min} caractères au moins",
        "en": "at least {min} characters",
    },
    "orders.value.reason_code": {
        "fr": "de 2 à 16 lettres majuscules, chiffres ou « - »",
        "en": "2 to 16 upper-case letters, digits or “-”",
    },
    "orders.value.not_negative": {"fr": "doit être un nombre entier positif ou nul", "en": "must be 0 or more"},
    "field.first_name": {"fr": "Prénom", "en": "First name"},
    "field.last_name": {"fr": "Nom", "en": "Last name"},
    "field.badge": {"fr": "Badge", "en": "Badge"},
    "field.login": {"fr": "Identifiant", "en": "Login"},
    "field.display_name": {"fr": "Nom affiché", "en": "Display name"},
    "field.password": {"fr": "Mot de passe", "en": "Password"},
    "field.reason_code": {"fr": "Code du motif", "en": "Reason code"},
    "field.label_fr": {"fr": "Libellé (français)", "en": "Label (French)"},
    "field.label_en": {"fr": "Libellé (anglais)", "en": "Label (English)"},
    "field.good": {"fr": "Pièces bonnes", "en": "Good parts"},
    "field.scrap": {"fr": "Rebuts", "en": "Scrap"},
    "import.at_line": {"fr": "Ligne {line} : {problem}", "en": "Line {line}: {problem}"},
    "import.in_column": {"fr": "colonne « {column} » : {problem}", "en": "column “{column}”: {problem}"},
    "import.empty": {"fr": "le fichier est vide", "en": "the file is empty"},
    "import.no_rows": {"fr": "le fichier n'a pas de ligne de commande", "en": "the file has no order row"},
    "import.missing_columns": {
        "fr": "colonne(s) manquante(s) : {columns}. En-tête attendu : {expected}",
        "en": "missing column(s): {columns}. Expected header: {expected}",
    },
    "import.duplicate_column": {
        "fr": "la colonne « {column} » apparaît deux fois",
        "en": "column “{column}” appears twice",
    },
    "import.too_many_rows": {"fr": "trop de lignes ({max} au plus)", "en": "too many rows (at most {max})"},
    "import.field_count": {
        "fr": "{found} valeur(s) au lieu de {expected} (un séparateur en trop ou en moins ?)",
        "en": "{found} value(s) instead of {expected} (a separator too many or missing?)",
    },
    "import.unreadable_row": {
        "fr": "ligne illisible : une cellule dépasse {max} caractères (un guillemet « \" » jamais refermé ?)",
        "en": "unreadable row: a cell is over {max} characters (a quote “\"” never closed?)",
    },
    "import.required": {"fr": "valeur manquante", "en": "missing value"},
    "import.not_integer": {"fr": "« {value} » n'est pas un nombre entier", "en": "“{value}” is not a whole number"},
    "import.not_number": {"fr": "« {value} » n'est pas un nombre", "en": "“{value}” is not a number"},
    "import.out_of_range": {
        "fr": "{value} n'est pas entre {min} et {max}",
        "en": "{value} is not between {min} and {max}",
    },
    "import.out_of_range_s": {
        "fr": "{value} s n'est pas entre {min} et {max} s",
        "en": "{value} s is not between {min} and {max} s",
    },
    "import.bad_date": {
        "fr": "« {value} » n'est pas une date (AAAA-MM-JJ ou JJ/MM/AAAA)",
        "en": "“{value}” is not a date (YYYY-MM-DD or DD/MM/YYYY)",
    },
    "import.bad_machine": {
        "fr": "« {value} » n'est pas un type de machine (tour ou fraiseuse)",
        "en": "“{value}” is not a machine kind (lathe or mill)",
    },
    "import.too_long": {
        "fr": "trop long ({length} caractères, {max} au plus)",
        "en": "too long ({length} characters, at most {max})",
    },
    "import.bad_characters": {
        "fr": "caractère interdit (tabulation, retour à la ligne ou « \\ »)",
        "en": "forbidden character (tab, line break or “\\”)",
    },
    "import.order_differs": {
        "fr": "ne correspond pas à la ligne {first_line} de la même commande {order}",
        "en": "differs from line {first_line} of the same order {order}",
    },
    "import.duplicate_operation": {
        "fr": "l'opération {operation} de la commande {order} est déjà à la ligne {first_line}",
        "en": "operation {operation} of order {order} is already on line {first_line}",
    },
    "import.order_exists": {
        "fr": "la commande {order} existe déjà dans Copeau",
        "en": "order {order} already exists in Copeau",
    },
    "orders.unknown_order": {"fr": "Commande « {order} » inconnue.", "en": "Unknown order “{order}”."},
    "orders.session_still_open": {
        "fr": "La session n° {session_id} est encore en cours sur {machine} : la déclaration se fait à la borne.",
        "en": "Session no. {session_id} is still running on {machine}: it is declared at the kiosk.",
    },
    "orders.value.file_too_large": {
        "fr": "fichier trop gros ({max_mb} Mo au plus)",
        "en": "file too large (at most {max_mb} MB)",
    },
    "field.file": {"fr": "Fichier", "en": "File"},
    "web.login_required": {
        "fr": "Connectez-vous d'abord (maîtres professionnels).",
        "en": "Log in first (maîtres professionnels).",
    },
    "web.kiosk_forbidden": {
        "fr": "Une borne n'a pas accès à cette page : elle sert seulement aux actions de sa machine.",
        "en": "A kiosk has no access to this page: it may only do its own machine's kiosk actions.",
    },
    "web.bad_kiosk_key": {
        "fr": "Cette clé de borne n'est pas celle de {machine}. Demandez la bonne adresse à un maître professionnel.",
        "en": "This kiosk key is not {machine}'s. Ask a maître professionnel for the right address.",
    },
    "web.kiosk_key_required": {
        "fr": (
            "Cette borne n'est pas encore autorisée pour {machine}. Ouvrez une fois l'adresse donnée par un maître "
            "professionnel (elle se termine par ?cle=…)."
        ),
        "en": (
            "This kiosk is not authorised for {machine} yet. Open once the address given by a maître "
            "professionnel (it ends with ?cle=…)."
        ),
    },
    "web.csrf_rejected": {
        "fr": "Demande refusée : elle ne vient pas d'une page de Copeau. Rechargez la page et recommencez.",
        "en": "Request refused: it does not come from a Copeau page. Reload the page and try again.",
    },
    "web.invalid_request": {
        "fr": "Demande incomplète ou mal formée (champs : {fields}).",
        "en": "Incomplete or malformed request (fields: {fields}).",
    },
    "web.not_found": {"fr": "Cette page n'existe pas.", "en": "This page does not exist."},
    "web.http_error": {"fr": "Demande refusée (HTTP {status}).", "en": "Request refused (HTTP {status})."},
    "web.brand": {"fr": "Copeau", "en": "Copeau"},
    "web.title": {"fr": "Copeau — suivi d'atelier", "en": "Copeau — shop-floor tracker"},
    "web.lang_switch": {"fr": "English", "en": "Français"},
    "web.back": {"fr": "Retour", "en": "Back"},
    "web.seconds": {"fr": "{value} s", "en": "{value} s"},
    "web.error.heading": {"fr": "Ce n'est pas possible", "en": "That is not possible"},
    "web.home.link": {"fr": "Accueil", "en": "Home"},
    "web.home.intro": {
        "fr": "Bornes des machines, commandes et avancement des travaux de l'atelier.",
        "en": "Machine kiosks, orders and job progress for the workshop.",
    },
    "web.home.kiosks": {"fr": "Bornes des machines", "en": "Machine kiosks"},
    "web.home.kiosk_hint": {
        "fr": "Une borne s'ouvre une première fois avec l'adresse complète donnée par un maître (…?cle=…).",
        "en": "A kiosk is opened once with the full address given by a maître (…?cle=…).",
    },
    "web.home.admin": {"fr": "Maîtres professionnels", "en": "Maîtres professionnels"},
    "web.home.admin_link": {"fr": "Commandes et apprentis", "en": "Orders and apprentices"},
    "web.home.api": {"fr": "API (documentation OpenAPI)", "en": "API (OpenAPI documentation)"},
    "web.login.heading": {"fr": "Connexion des maîtres professionnels", "en": "Log-in for maîtres professionnels"},
    "web.login.submit": {"fr": "Se connecter", "en": "Log in"},
    "web.logout": {"fr": "Se déconnecter", "en": "Log out"},
    "web.logged_in_as": {"fr": "Connecté : {name}", "en": "Logged in: {name}"},
    "web.nav.orders": {"fr": "Commandes", "en": "Orders"},
    "web.nav.import": {"fr": "Importer des commandes", "en": "Import orders"},
    "web.nav.apprentices": {"fr": "Apprentis", "en": "Apprentices"},
    "web.nav.sessions": {"fr": "Sessions", "en": "Sessions"},
    "web.nav.reasons": {"fr": "Motifs de rebut", "en": "Scrap reasons"},
    "web.notice.imported": {"fr": "Commandes importées.", "en": "Orders imported."},
    "web.notice.apprentice_added": {"fr": "Apprenti ajouté.", "en": "Apprentice added."},
    "web.notice.session_closed": {"fr": "Session close.", "en": "Session closed."},
    "web.notice.declared": {"fr": "Déclaration enregistrée.", "en": "Declaration saved."},
    "web.notice.reason_added": {"fr": "Motif ajouté.", "en": "Reason added."},
    "web.notice.reason_changed": {"fr": "Motif modifié.", "en": "Reason changed."},
    "web.orders.heading": {"fr": "Commandes en cours", "en": "Open orders"},
    "web.orders.none": {"fr": "Aucune commande en cours.", "en": "No open order."},
    "web.orders.counts_unavailable": {
        "fr": "InfluxDB ne répond pas : l'avancement n'est pas affiché.",
        "en": "InfluxDB does not answer: progress is not shown.",
    },
    "web.orders.summary": {
        "fr": "Pièce {part} — {quantity} pièces — échéance {due}",
        "en": "Part {part} — {quantity} parts — due {due}",
    },
    "web.orders.col.operation": {"fr": "Opération", "en": "Operation"},
    "web.orders.col.machine": {"fr": "Machine", "en": "Machine"},
    "web.orders.col.cycle": {"fr": "Cycle standard", "en": "Standard cycle"},
    "web.orders.col.good": {"fr": "Bonnes", "en": "Good"},
    "web.orders.col.scrap": {"fr": "Rebuts", "en": "Scrap"},
    "web.orders.col.remaining": {"fr": "Reste", "en": "Remaining"},
    "web.orders.col.eta": {"fr": "Fin estimée", "en": "ETA"},
    "web.orders.col.delay": {"fr": "Par rapport à l'échéance", "en": "Against the due date"},
    "web.orders.eta_recent": {"fr": "dans {hours} h (rythme récent)", "en": "in {hours} h (recent rate)"},
    "web.orders.eta_standard": {"fr": "dans {hours} h (temps standard)", "en": "in {hours} h (standard time)"},
    "web.orders.eta_done": {"fr": "terminé", "en": "done"},
    "web.orders.late": {"fr": "en retard de {hours} h", "en": "{hours} h late"},
    "web.orders.ahead": {"fr": "{hours} h d'avance", "en": "{hours} h ahead"},
    "web.import.heading": {"fr": "Importer des commandes (CSV)", "en": "Import orders (CSV)"},
    "web.import.intro": {
        "fr": "Une ligne par opération ; les colonnes de la commande se répètent sur chacune de ses lignes :",
        "en": "One row per operation; the order's columns are repeated on each of its rows:",
    },
    "web.import.sample": {
        "fr": (
            "commande;client;référence pièce;quantité;échéance;opération;machine;temps de cycle (s);réglage (s)\n"
            "CMD-2026-017;Mécanique Durand;BRIDE-45;200;2026-12-18;10;fraiseuse;42,5;900\n"
            "CMD-2026-017;Mécanique Durand;BRIDE-45;200;2026-12-18;20;tour;30;600"
        ),
        "en": (
            "order;customer;part number;quantity;due date;operation;machine;cycle time (s);setup time (s)\n"
            "CMD-2026-017;Durand Engineering;BRIDE-45;200;2026-12-18;10;mill;42.5;900\n"
            "CMD-2026-017;Durand Engineering;BRIDE-45;200;2026-12-18;20;lathe;30;600"
        ),
    },
    "web.import.rule.separator": {
        "fr": "Séparateur « ; » (Excel français), « , » ou tabulation ; en-têtes en français ou en anglais.",
        "en": "Separator “;” (French Excel), “,” or tab; headers in French or English.",
    },
    "web.import.rule.rows": {
        "fr": "Machine : tour ou fraiseuse. Échéance : AAAA-MM-JJ ou JJ/MM/AAAA. Réglage facultatif.",
        "en": "Machine: lathe or mill (tour, fraiseuse). Due date: YYYY-MM-DD or DD/MM/YYYY. Set-up optional.",
    },
    "web.import.rule.values": {
        "fr": "Les temps sont en secondes ; la virgule décimale est acceptée (42,5).",
        "en": "Times are in seconds; a decimal comma is accepted (42,5).",
    },
    "web.import.rule.all_or_nothing": {
        "fr": "Chaque ligne est vérifiée ; à la moindre erreur, rien n'est importé et chaque ligne fautive est listée.",
        "en": "Every row is checked; at the first error nothing is imported, and every bad line is listed.",
    },
    "web.import.file": {"fr": "Fichier CSV", "en": "CSV file"},
    "web.import.submit": {"fr": "Importer", "en": "Import"},
    "web.apprentices.heading": {"fr": "Apprentis", "en": "Apprentices"},
    "web.apprentices.code": {"fr": "Code (pseudonyme)", "en": "Code (pseudonym)"},
    "web.apprentices.code_hint": {
        "fr": "Seul le code pseudonyme quitte Copeau (MQTT, InfluxDB, tableaux de bord) ; il est tiré au hasard.",
        "en": "Only the pseudonymous code leaves Copeau (MQTT, InfluxDB, dashboards); it is drawn at random.",
    },
    "web.apprentices.add": {"fr": "Ajouter un apprenti", "en": "Add an apprentice"},
    "web.apprentices.submit": {"fr": "Ajouter", "en": "Add"},
    "web.sessions.heading": {"fr": "Sessions de travail", "en": "Work sessions"},
    "web.sessions.hint": {
        "fr": "Clore une session oubliée, ou déclarer les pièces d'une session close sans déclaration.",
        "en": "Close a forgotten session, or declare the parts of a session closed without a declaration.",
    },
    "web.sessions.col.id": {"fr": "N°", "en": "No."},
    "web.sessions.col.machine": {"fr": "Machine", "en": "Machine"},
    "web.sessions.col.apprentice": {"fr": "Apprenti", "en": "Apprentice"},
    "web.sessions.col.job": {"fr": "Travail", "en": "Job"},
    "web.sessions.col.started": {"fr": "Début", "en": "Start"},
    "web.sessions.col.ended": {"fr": "Fin", "en": "End"},
    "web.sessions.col.declaration": {"fr": "Déclaration", "en": "Declaration"},
    "web.sessions.close": {"fr": "Clore", "en": "Close"},
    "web.sessions.declare": {"fr": "Déclarer", "en": "Declare"},
    "web.sessions.running": {"fr": "en cours", "en": "running"},
    "web.sessions.declared": {"fr": "{good} bonne(s), {scrap} rebut(s)", "en": "{good} good, {scrap} scrap"},
    "web.reasons.heading": {"fr": "Motifs de rebut", "en": "Scrap reasons"},
    "web.reasons.state": {"fr": "État", "en": "State"},
    "web.reasons.active": {"fr": "actif", "en": "active"},
    "web.reasons.inactive": {"fr": "retiré", "en": "withdrawn"},
    "web.reasons.activate": {"fr": "Rétablir", "en": "Restore"},
    "web.reasons.deactivate": {"fr": "Retirer", "en": "Withdraw"},
    "web.reasons.add": {"fr": "Ajouter un motif", "en": "Add a reason"},
    "web.reasons.submit": {"fr": "Ajouter", "en": "Add"},
    "kiosk.title": {"fr": "Borne — {machine}", "en": "Kiosk — {machine}"},
    "kiosk.scan_label": {"fr": "Lecteur", "en": "Reader"},
    "kiosk.idle": {"fr": "Scannez votre badge", "en": "Scan your badge"},
    "kiosk.idle_hint": {
        "fr": "Puis la fiche de travail, ou touchez le travail dans la liste.",
        "en": "Then the job card, or tap the job in the list.",
    },
    "kiosk.identified": {"fr": "Bonjour {first_name} !", "en": "Hello {first_name}!"},
    "kiosk.identified_hint": {
        "fr": "Scannez la fiche de travail, ou touchez un travail prévu pour cette machine :",
        "en": "Scan the job card, or tap a job planned for this machine:",
    },
    "kiosk.no_planned": {"fr": "Aucun travail prévu pour cette machine.", "en": "No job planned for this machine."},
    "kiosk.cancel": {"fr": "Ce n'est pas moi", "en": "That's not me"},
    "kiosk.running": {"fr": "{first_name} — travail {job}", "en": "{first_name} — job {job}"},
    "kiosk.job_line": {
        "fr": "{customer} — pièce {part_number} — échéance {due_date}",
        "en": "{customer} — part {part_number} — due {due_date}",
    },
    "kiosk.parts": {"fr": "Pièces bonnes (commande)", "en": "Good parts (order)"},
    "kiosk.target": {"fr": "objectif {quantity}", "en": "target {quantity}"},
    "kiosk.session_parts": {"fr": "Faites pendant ce travail", "en": "Made during this job"},
    "kiosk.last_cycle": {"fr": "Dernier cycle", "en": "Last cycle"},
    "kiosk.seconds": {"fr": "{value} s", "en": "{value} s"},
    "kiosk.standard": {"fr": "standard {value} s", "en": "standard {value} s"},
    "kiosk.counts_unavailable": {
        "fr": "Compteurs indisponibles pour l'instant : le travail continue, les chiffres reviendront.",
        "en": "Counts unavailable for now: work goes on, the numbers will come back.",
    },
    "kiosk.end_job": {"fr": "Fin du travail", "en": "End of job"},
    "kiosk.declare_heading": {"fr": "Déclarez vos pièces", "en": "Declare your parts"},
    "kiosk.declare_good": {"fr": "Pièces bonnes", "en": "Good parts"},
    "kiosk.declare_scrap": {"fr": "Rebuts, par motif", "en": "Scrap, by reason"},
    "kiosk.declare_total": {
        "fr": "Déclarées : {declared} — comptées par la machine : {made}",
        "en": "Declared: {declared} — counted by the machine: {made}",
    },
    "kiosk.declare_submit": {"fr": "Valider et terminer", "en": "Confirm and finish"},
    "kiosk.declare_back": {"fr": "Retour", "en": "Back"},
    "kiosk.ended": {
        "fr": "Travail terminé, merci ! (session n° {session})",
        "en": "Job finished, thank you! (session no. {session})",
    },
    "kiosk.offline": {
        "fr": "Le serveur ne répond pas. Nouvel essai dans un instant…",
        "en": "The server does not answer. Trying again in a moment…",
    },
    # -- the live board (/tableau, web/live.py); keys after "live." go to the page's script as they are
    "live.title": {"fr": "Tableau de l'atelier — {site}", "en": "Workshop board — {site}"},
    "live.state.running": {"fr": "En marche", "en": "Running"},
    "live.state.idle": {"fr": "En attente", "en": "Idle"},
    "live.state.alarm": {"fr": "Alarme", "en": "Alarm"},
    "live.state.offline": {"fr": "Hors ligne", "en": "Offline"},
    "live.state.unknown": {"fr": "État inconnu", "en": "State unknown"},
    "live.offline.machine": {
        "fr": "le collecteur ne peut plus lire la machine",
        "en": "the collector cannot read the machine",
    },
    "live.offline.collector": {"fr": "le collecteur est arrêté", "en": "the collector is stopped"},
    "live.offline.stale": {
        "fr": "aucune nouvelle de la machine depuis trop longtemps",
        "en": "no news from the machine for too long",
    },
    "live.since": {"fr": "depuis {time}", "en": "since {time}"},
    "live.no_job": {"fr": "Pas de travail en cours", "en": "No job running"},
    "live.job": {"fr": "{order} — op. {operation}", "en": "{order} — op. {operation}"},
    "live.apprentice": {"fr": "apprenti {code}", "en": "apprentice {code}"},
    "live.good": {"fr": "pièces bonnes", "en": "good parts"},
    "live.target": {"fr": "sur {quantity}", "en": "of {quantity}"},
    "live.scrap": {"fr": "{scrap} rebut(s)", "en": "{scrap} scrap"},
    "live.last_cycle": {"fr": "Dernier cycle", "en": "Last cycle"},
    "live.seconds": {"fr": "{value} s", "en": "{value} s"},
    "live.standard": {"fr": "standard {value} s", "en": "standard {value} s"},
    "live.eta": {"fr": "Fin estimée", "en": "Estimated end"},
    "live.due": {"fr": "échéance {date}", "en": "due {date}"},
    "live.late": {"fr": "retard {duration}", "en": "{duration} late"},
    "live.ahead": {"fr": "avance {duration}", "en": "{duration} ahead"},
    "live.done": {"fr": "terminé", "en": "done"},
    "live.basis.standard": {"fr": "au temps standard", "en": "at standard time"},
    "live.minutes": {"fr": "{m} min", "en": "{m} min"},
    "live.hours": {"fr": "{h} h {m}", "en": "{h} h {m}"},
    "live.days": {"fr": "{d} j {h} h", "en": "{d} d {h} h"},
    "live.feed_down": {"fr": "Flux de données interrompu", "en": "Data feed interrupted"},
    "live.feed_down.mqtt": {
        "fr": "Le service n'est plus relié aux machines (broker MQTT) : les chiffres affichés ne bougent plus.",
        "en": "The service lost its link to the machines (MQTT broker): the numbers shown are frozen.",
    },
    "live.feed_down.stream": {
        "fr": "Connexion au serveur perdue. Nouvel essai…",
        "en": "Connection to the server lost. Trying again…",
    },
    "live.updated": {"fr": "Dernière nouvelle : {time}", "en": "Last news: {time}"},
    "live.last_event": {"fr": "dernier message {time}", "en": "last message {time}"},
    "live.svc.collector": {"fr": "Collecteur {id} :", "en": "Collector {id}:"},
    "live.svc.gateway": {"fr": "Passerelle {id} :", "en": "Gateway {id}:"},
    "live.svc.silent": {"fr": "muet depuis {time}", "en": "silent since {time}"},
    "live.svc.mqtt_down": {"fr": "coupé du broker MQTT", "en": "cut off from the MQTT broker"},
    "live.svc.outbox": {"fr": "{n} en attente d'envoi", "en": "{n} waiting to be sent"},
    "live.svc.spool.1": {
        "fr": "file d'attente pleine : {n} événements de suivi abandonnés (jamais de pièce)",
        "en": "outbox full: {n} telemetry events shed (never a part)",
    },
    "live.svc.spool.2": {
        "fr": "disque plein : événements gardés en mémoire", "en": "disk full: events held in memory",
    },
    "live.svc.dead_letters": {"fr": "{n} message(s) rejeté(s)", "en": "{n} dead letter(s)"},
    "live.svc.queue": {"fr": "{n} à écrire", "en": "{n} to write"},
    "live.svc.influx_down": {"fr": "InfluxDB ne répond pas", "en": "InfluxDB not answering"},
    "live.svc.reconnects": {"fr": "{n} reconnexion(s)", "en": "{n} reconnection(s)"},
    "demo.board": {
        "fr": "Tableau de l'atelier, pour l'écran de l'atelier : {url}",
        "en": "Workshop board, for the workshop TV: {url}",
    },
    "web.home.board": {"fr": "Tableau de l'atelier (écran de l'atelier)", "en": "Workshop board (for the TV)"},
    "dashboards.written": {
        "fr": "{n} fichier(s) de tableaux générés sous dashboards/.",
        "en": "{n} dashboard file(s) generated under dashboards/.",
    },
    "dashboards.stale": {
        "fr": "Fichiers générés périmés : {files}. Lancez : copeau dashboards generate",
        "en": "Generated files are out of date: {files}. Run: copeau dashboards generate",
    },
    "dashboards.up_to_date": {
        "fr": "Les fichiers générés sont à jour.",
        "en": "The generated files are up to date.",
    },
    "dashboards.pushed": {
        "fr": "Grafana {url} : source de données {datasource}, {n} tableau(x) enregistré(s) ({uids}).",
        "en": "Grafana {url}: data source {datasource}, {n} board(s) saved ({uids}).",
    },
}


def lang() -> str:
    value = os.environ.get("COPEAU_LANG", "fr").lower()[:2]
    return value if value in ("fr", "en") else "fr"


def t(key: str, **values: object) -> str:
    """The text for `key` in the current language, formatted with `values`."""
    entry = CATALOGUE[key]
    return entry.get(lang(), entry["fr"]).format(**values)
