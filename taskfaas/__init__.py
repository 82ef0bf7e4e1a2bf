"""taskfaas: the command-line client of a running stack (`taskfaas submit|result|workers|stats|tail`)."""
