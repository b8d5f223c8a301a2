"""HTTP admin API shared by the roles: token rules, JSON status, Prometheus metrics."""
