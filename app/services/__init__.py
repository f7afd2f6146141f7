"""Service verbs: the logic between thin routes and the repository."""
