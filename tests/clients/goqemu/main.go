// The go-qemu client script of the interop tests: Debian's
// golang-github-digitalocean-go-qemu-dev, built with Debian's Go.
//
// Usage: goqemu-client SOCKET
//
// It connects with qmp.NewSocketMonitor, wraps it in qemu.NewDomain and
// prints one JSON line per call: {"call": NAME, "result": ..., "error": ...}.
// The interop test runs it against real QEMU 7.2 and against the simulator
// and compares the two transcripts.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"time"

	"github.com/digitalocean/go-qemu/qemu"
	"github.com/digitalocean/go-qemu/qmp"
)

const deadline = 10 * time.Second

func report(call string, result interface{}, err error) {
	line := map[string]interface{}{"call": call, "result": result}
	if err != nil {
		line["error"] = err.Error()
	}
	out, merr := json.Marshal(line)
	if merr != nil {
		out, _ = json.Marshal(map[string]string{"call": call, "error": merr.Error()})
	}
	fmt.Println(string(out))
}

// awaitEvent reads the domain's event stream until an event named name arrives.
func awaitEvent(events chan qmp.Event, name string) {
	timeout := time.After(deadline)
	for {
		select {
		case ev := <-events:
			if ev.Event == name {
				report("event", map[string]interface{}{"event": ev.Event, "data": ev.Data}, nil)
				return
			}
		case <-timeout:
			report("event", nil, fmt.Errorf("no %s event within %s", name, deadline))
			return
		}
	}
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: goqemu-client SOCKET")
		os.Exit(2)
	}
	mon, err := qmp.NewSocketMonitor("unix", os.Args[1], deadline)
	if err != nil {
		report("NewSocketMonitor", nil, err)
		os.Exit(1)
	}
	if err = mon.Connect(); err != nil {
		report("Connect", nil, err)
		os.Exit(1)
	}
	domain, err := qemu.NewDomain(mon, "interop-vm")
	if err != nil {
		report("NewDomain", nil, err)
		os.Exit(1)
	}
	defer domain.Close()

	status, err := domain.Status()
	report("Status", status, err)
	version, err := domain.Version()
	report("Version", version, err)
	pkg, err := domain.PackageVersion()
	report("PackageVersion", pkg, err)
	commands, err := domain.Commands()
	sort.Strings(commands)
	report("Commands", commands, err)
	for _, name := range []string{"query-status", "query-pci", "screendump", "query-blockstats"} {
		supported, err := domain.Supported(name)
		report("Supported "+name, supported, err)
	}
	blocks, err := domain.BlockDevices()
	report("BlockDevices", blocks, err)
	jobs, err := domain.BlockJobs()
	report("BlockJobs", jobs, err)
	stats, err := domain.BlockStats()
	report("BlockStats", stats, err)
	pci, err := domain.PCIDevices()
	report("PCIDevices", pci, err)
	cpus, err := domain.CPUs()
	report("CPUs", cpus, err)
	dump, err := domain.ScreenDump()
	if err == nil {
		image, rerr := io.ReadAll(dump)
		dump.Close()
		report("ScreenDump", len(image), rerr)
	} else {
		report("ScreenDump", nil, err)
	}

	events, done, err := domain.Events()
	report("Events", err == nil, err)
	if err != nil {
		os.Exit(1)
	}
	for _, step := range []struct{ command, event string }{
		{"cont", "RESUME"}, {"stop", "STOP"}, {"system_reset", "RESET"},
	} {
		raw, err := domain.Run(qmp.Command{Execute: step.command})
		report("Run "+step.command, string(raw), err)
		awaitEvent(events, step.event)
	}
	done <- struct{}{}
	status, err = domain.Status()
	report("Status", status, err)
}
