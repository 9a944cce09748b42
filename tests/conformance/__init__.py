"""Differential conformance: the same scenarios against real QEMU 7.2 and the simulator.

* :mod:`.harness` -- steps, targets (a QEMU process, a ``SimulatedVM``), the recorder;
* :mod:`.masking` -- what varies from run to run, hidden before comparing;
* :mod:`.scenarios` -- the scenarios (protocol, run state, VNC, two monitors);
* :mod:`.guest` -- the slow one: a booted Linux guest makes the guest-driven events;
* :mod:`.differences` -- the ONE list of deliberate differences, with reasons;
* :mod:`.compare` -- line-by-line comparison that allows only those differences;
* :mod:`.report` -- ``python -m tests.conformance.report [--slow]``.
"""
