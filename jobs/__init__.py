"""mtlsprobe's control plane: discovery, policy, planning, Jobs, the agent and the lab."""
