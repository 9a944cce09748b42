// The npm qemu-qmp 0.5.0 client script of the interop tests.
//
// Usage: node qemu_qmp_client.js SOCKET   (with NODE_PATH at the installed node_modules)
//
// One JSON line per call: {"call": NAME, "result": ..., "error": ...}; the
// interop test runs it against real QEMU 7.2 and the simulator and compares.
'use strict';
const QMP = require('qemu-qmp');

function report(call, error, result) {
  const line = {call: call, result: result === undefined ? null : result};
  if (error) line.error = error.message;
  process.stdout.write(JSON.stringify(line) + '\n');
}

function execute(qmp, command, args) {
  return new Promise((resolve) => {
    const done = (err, result) => { report('execute ' + command, err, result); resolve(); };
    if (args) qmp.execute(command, args, done); else qmp.execute(command, done);
  });
}

function event(qmp, name) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => { report('event ' + name, new Error('timeout')); resolve(); },
                             10000);
    qmp.once(name.toLowerCase(), (ev) => { clearTimeout(timer); report('event', null, ev); resolve(); });
  });
}

const qmp = new QMP();
qmp.connect(process.argv[2], async (err) => {
  if (err) { report('connect', err); process.exit(1); }
  report('connect', null, {version: qmp.version, capabilities: qmp.capabilities});
  await execute(qmp, 'query-status');
  await execute(qmp, 'query-name');
  await execute(qmp, 'query-version');
  await execute(qmp, 'no-such-command');
  await execute(qmp, 'query-status', {bogus: true});
  let resumed = event(qmp, 'RESUME');
  await execute(qmp, 'cont');
  await resumed;
  let stopped = event(qmp, 'STOP');
  await execute(qmp, 'stop');
  await stopped;
  await execute(qmp, 'query-status');
  qmp.end();
});
