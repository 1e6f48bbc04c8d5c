"""The canary rollout (pure): traffic split, metric analysis, and the state machine that drives them."""
