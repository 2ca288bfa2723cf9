"""Packet-level proof that mesh traffic is encrypted on the wire (the ``wire`` check).

A capture (``capture``: AF_PACKET with a kernel BPF filter, ``bpf``) decodes frames down
to TCP, through VXLAN and Geneve (``decode``), follows each TCP direction as a stream
(``stream``: marker search across segment boundaries, TLS record framing), and its
observation (``record``: JSON lines, also what a node agent reports) is judged by a pure
function (``judge``): TLS records and no marker in cleartext pass; a marker in cleartext
fails; a flow not seen, or a capture that did not see the control's plaintext, is an error.
"""
