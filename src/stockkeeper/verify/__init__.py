"""Checks of recorded operation histories against the audit log; a later `stockkeeper verify`
command will use them. Never imported by the request paths."""
