"""Google accounts as the scarce resource they are: each one's daily allowance per model, when it resets, how
fast it may be driven, and what it has left today.

- `calendar`: the Pacific day the allowances count in, and the next midnight that resets them.
- `policy`: pure rules: how long a model rests on an account after a quota or rate-limit answer, pacing, caps.
- `usage`: the ledger's read side (per account and model, and the pool's totals) for the API, panel and metrics.

The writes happen with each attempt's release, in `gateway.dispatcher.ledger`.
"""
