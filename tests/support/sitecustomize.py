"""Run at start-up by every Python process whose PYTHONPATH has tests/support (codonlm_faults.fault_env):
installs the fault injection its environment asks for. Test-only: never on the path of a user's process."""

import codonlm_faults

codonlm_faults.install()
