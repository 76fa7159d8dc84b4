"""Model monitoring: each model's results, verdicts and misses counted per window and per
week, its score distribution against a reference, and drift alerts."""
