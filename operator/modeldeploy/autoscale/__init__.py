"""Autoscaling from the metrics Triton pods report (pure recommender; the scraper lives beside it)."""
