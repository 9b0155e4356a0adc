"""`python -m dashboards`: regenerate the committed dashboard JSON and provisioning files."""

from __future__ import annotations

from dashboards.generate import PACKAGE_DIR, write_all


def main() -> None:
    """Write every generated file and list them."""
    for path in write_all():
        print(path.relative_to(PACKAGE_DIR.parent))


if __name__ == "__main__":
    main()
