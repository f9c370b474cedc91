"""The cluster (issue 12): its pure policy, without I/O — which live agent owns each check
(`ownership`) and the lease and fence rules under which one agent at a time delivers an
incident's actions (`lease`) — and the membership in the cluster's database, the `agents` table
and its statements (`members`), and the daemon's state in that database (`pgstate`). The store on
PostgreSQL applies these rules in its statements; nothing in the daemon uses them yet."""
