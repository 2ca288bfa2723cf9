"""Planning: discovery, the cluster snapshot, Istio policy semantics, the plan and its findings."""
