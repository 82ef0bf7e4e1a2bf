"""taskfaas: the command-line client of a running stack (`taskfaas submit|result|workers|stats|tail`:
cli, client), and the harness that starts a whole stack for the tests and benchmarks (stack)."""
