"""`stockkeeper bench`: load scenarios and their verdicts. Never imported by the request paths."""
