"""Reading the metrics Triton pods export on :8002 (parse is pure; scrape does the HTTP)."""
