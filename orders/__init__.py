"""Orders, apprentices and jobs: the relational side of Copeau (issue #4).

- `models`: the tables (SQLAlchemy 2, typed), `database`: engines (SQLite by default, WAL), `migrate`: Alembic
  migrations built in code (`orders/migrations/`).
- `catalog`: keyword-only service functions for apprentices, maîtres, orders and scrap reasons.
- `orderfile`: the CSV order import (every row checked, all or nothing).
- `station`: what happens at a machine: badge, job, end-of-job declaration (kiosk and MQTT badge readers).
- `progress`: order progress as a pure function; `tracking`: reads InfluxDB, writes `order_progress`.
- `errors`: typed domain errors whose texts live in the i18n catalogue.
"""
