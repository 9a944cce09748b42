"""qmpevents-qemu: the simulated VM behind QEMU's command line, for libvirt."""
