"""Evidence about a model: effect probes (``probes.py``), the certificate that compares an unlearned model with
its parent and a retrained reference (``certificate.py``), its Ed25519 signature (``signing.py``) and the checks a
third party runs on it (``check.py``). It sits above the workspace; the metric functions it uses live in
:mod:`disgorge.evaluate`. Nothing is imported here, so checking a certificate does not load torch."""
