"""The cluster's policy (issue 12), pure and without I/O: which live agent owns each check
(`ownership`) and the lease and fence rules under which one agent at a time delivers an
incident's actions (`lease`). The store on PostgreSQL applies these rules in its statements;
nothing in the daemon uses them yet."""
