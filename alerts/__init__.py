"""Rules, default rule packs, the evaluator and the alert lifecycle."""
