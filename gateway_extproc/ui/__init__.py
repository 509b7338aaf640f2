"""The spend page: views of spend and budgets, sign-in and sessions (docs/spend-page.md)."""
