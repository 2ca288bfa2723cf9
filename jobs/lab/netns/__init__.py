"""The lab with pods as Linux network namespaces (``mtlsprobe lab --netns``, root only).

Each lab pod is a network namespace with its own IP on a bridge the lab owns, a hosts
file naming the lab's Services (``/etc/netns/<ns>/hosts``, bind-mounted by ``ip netns
exec``), and, with a sidecar, Envoy inside under UID 1337 behind Istio's capture
rules. The probes run ``mtlsprobe check`` inside their namespaces with the Job spec's
arguments, so mesh calls take the path they take in a pod: resolve, connect, redirect.

``net``: namespaces, bridge, veths, hosts files, teardown from a state file.
``capture``: the iptables rules istio-init writes. ``envoy``: Istio-shaped bootstraps.
``lab``: bringing a scenario up and running the two probes.
"""
