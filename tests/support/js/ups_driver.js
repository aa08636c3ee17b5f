// Drives a UPS SCP with dcmjs-dimse (an independent DIMSE codec) from a JSON scenario and prints JSON results.
//
// usage: node ups_driver.js SCENARIO.json
// scenario: {host, port, calling, called, requests: [{op, uid, meta?, sopClass?, action?, dataset?, attributes?}]}
//   op: create | action | set | get | find; every N-* request names UPS Push as its SOP class and, with
//   `meta`, is sent on a presentation context of that class (the Push/Pull trap of PS3.4 CC.3.1).
// output (stdout, one JSON line): {association: "accepted"|"rejected"|"error", results: [{status, errorComment,
//   dataset}]}, one result per request in order (a C-FIND gives its final status and `matches`, the pending datasets).
'use strict';

const fs = require('fs');
const dimse = require('dcmjs-dimse');

const { Client, Dataset } = dimse;
const { NCreateRequest, NActionRequest, NSetRequest, NGetRequest, CFindRequest } = dimse.requests;
const PUSH = '1.2.840.10008.5.1.4.34.6.1';

// dcmjs-dimse logs at INFO on stdout: keep stdout for the results
const log = dimse.log;
if (log) {
  log.level = 'error';
}

function build(step) {
  let request;
  const meta = step.meta || undefined;
  switch (step.op) {
    case 'create':
      request = new NCreateRequest(PUSH, step.uid, meta);
      break;
    case 'action':
      request = new NActionRequest(PUSH, step.uid, step.action, meta);
      break;
    case 'set':
      request = new NSetRequest(PUSH, step.uid, meta);
      break;
    case 'get':
      request = new NGetRequest(PUSH, step.uid, step.attributes || [], meta);
      break;
    case 'find':
      request = new CFindRequest();
      request.setAffectedSopClassUid(step.sopClass);
      break;
    default:
      throw new Error(`unknown op ${step.op}`);
  }
  if (step.requestedClass) {
    // a wrong Requested/Affected SOP Class UID on purpose (refusal vectors)
    const command = request.getCommandDataset();
    const key = step.op === 'create' ? 'AffectedSOPClassUID' : 'RequestedSOPClassUID';
    command.setElement(key, step.requestedClass);
  }
  if (step.dataset) {
    request.setDataset(new Dataset(step.dataset));
  }
  return request;
}

function main() {
  const scenario = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const results = scenario.requests.map(() => null);
  const matches = scenario.requests.map(() => []);
  const client = new Client();
  scenario.requests.forEach((step, i) => {
    const request = build(step);
    request.on('response', (response) => {
      const status = response.getStatus();
      const dataset = response.getDataset();
      if (step.op === 'find' && (status === 0xff00 || status === 0xff01)) {
        matches[i].push(dataset ? dataset.getElements() : null);
        return;
      }
      results[i] = {
        status,
        errorComment: response.getErrorComment ? response.getErrorComment() || '' : '',
        dataset: dataset ? dataset.getElements() : null,
        matches: step.op === 'find' ? matches[i] : undefined,
      };
    });
    client.addRequest(request);
  });
  let association = 'accepted';
  client.on('associationRejected', () => { association = 'rejected'; });
  client.on('networkError', (e) => { association = `error: ${e && e.message}`; });
  client.on('closed', () => {
    process.stdout.write(JSON.stringify({ association, results }) + '\n');
  });
  client.send(scenario.host, scenario.port, scenario.calling, scenario.called, { associationTimeout: 30000, pduTimeout: 30000 });
}

main();
