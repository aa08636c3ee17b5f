// A scripted UPS task manager on dcmjs-dimse: independent code (its own DIMSE codec, its own state machine written
// from PS3.4 Table CC.1.1-2) that the node's performer works against (tests/workflow/test_ups_performer.py).
//
// usage: node ups_task_manager.js SCENARIO.json      prints "listening", then one JSON line per request handled:
//   {op, uid, action?, status, dataset (what the request carried), contexts? (op "associate": proposed classes)}
// scenario: {port, ae, stateFile, items: [{uid, dataset}],
//   claim: "grant" | "already-claimed" | "no-response"   ("already-claimed": another performer's claim lands first:
//                                            C302; "no-response": the first claim lands but is never answered),
//   refuseCompletion: N                     (the first N COMPLETED requests answered C304 even when the final-state
//                                            requirements are met: a premature completion as the manager sees it),
//   cancelAtProgress: P                     (after an N-SET with Procedure Step Progress >= P, a UPS Cancel Requested
//                                            event is sent to eventTarget),
//   eventTarget: {host, port, ae}}
// The state is kept in stateFile after every change; a restart with the same file carries on (warm start) and
// tells eventTarget (SCP Status Change, event 4, RESTARTED / WARM START).
'use strict';

const fs = require('fs');
const dimse = require('dcmjs-dimse');

const { Server, Scp, Client, Dataset } = dimse;
const { NActionResponse, NSetResponse, NGetResponse, CFindResponse } = dimse.responses;
const { NEventReportRequest } = dimse.requests;
const { Status, PresentationContextResult, TransferSyntax } = dimse.constants;
const PUSH = '1.2.840.10008.5.1.4.34.6.1';
const WATCH = '1.2.840.10008.5.1.4.34.6.2';
const PULL = '1.2.840.10008.5.1.4.34.6.3';
const EVENT = '1.2.840.10008.5.1.4.34.6.4';
const OTHER_PERFORMER_TX = '2.25.999999999999999999';

if (dimse.log) {
  dimse.log.level = 'error';
}

const scenario = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
let state;
let restarted = false;
if (scenario.stateFile && fs.existsSync(scenario.stateFile)) {
  state = JSON.parse(fs.readFileSync(scenario.stateFile, 'utf8'));
  restarted = true;
} else {
  state = { items: {}, refusals: scenario.refuseCompletion || 0, cancelSent: false };
  (scenario.items || []).forEach((item) => {
    state.items[item.uid] = { state: 'SCHEDULED', tx: '', dataset: item.dataset };
  });
}

function save() {
  if (scenario.stateFile) {
    fs.writeFileSync(`${scenario.stateFile}.tmp`, JSON.stringify(state));
    fs.renameSync(`${scenario.stateFile}.tmp`, scenario.stateFile);
  }
}

function record(entry) {
  process.stdout.write(JSON.stringify(entry) + '\n');
}

function sendEvent(uid, eventType, info) {
  const target = scenario.eventTarget;
  if (!target) {
    return;
  }
  const request = new NEventReportRequest(PUSH, uid, eventType, EVENT);
  request.setDataset(new Dataset(info));
  request.on('response', (response) => {
    record({ op: 'event', uid, eventType, status: response.getStatus() });
  });
  const client = new Client();
  client.addRequest(request);
  client.on('networkError', (e) => { record({ op: 'event', uid, eventType, status: null, error: String(e && e.message) }); });
  client.send(target.host, target.port, scenario.ae, target.ae, { associationTimeout: 30000, pduTimeout: 30000 });
}

function hasValue(ds, keyword) {
  const value = ds ? ds[keyword] : undefined;
  if (Array.isArray(value)) {
    return value.length > 0;
  }
  return value !== undefined && value !== null && String(value).trim() !== '';
}

// the final-state requirements (PS3.4 CC.2.5.1.1), the ones a performer must set
function finalProblems(ds, target) {
  if (target === 'COMPLETED') {
    const performed = (ds.UnifiedProcedureStepPerformedProcedureSequence || [])[0];
    if (!performed) {
      return 'no UPS Performed Procedure Sequence';
    }
    const wanted = ['PerformedStationNameCodeSequence', 'PerformedProcedureStepStartDateTime',
      'PerformedProcedureStepEndDateTime', 'PerformedWorkitemCodeSequence'];
    const missing = wanted.filter((k) => !hasValue(performed, k));
    if (!('OutputInformationSequence' in performed)) {
      missing.push('OutputInformationSequence');
    }
    return missing.length ? `missing ${missing.join(', ')}` : '';
  }
  const progress = (ds.ProcedureStepProgressInformationSequence || [])[0];
  if (!progress || !hasValue(progress, 'ProcedureStepDiscontinuationReasonCodeSequence')) {
    return 'no discontinuation reason';
  }
  return '';
}

class TaskManager extends Scp {
  associationRequested(association) {
    this.association = association;
    const proposed = [];
    association.getPresentationContexts().forEach((c) => {
      const context = association.getPresentationContext(c.id);
      const klass = context.getAbstractSyntaxUid();
      proposed.push(klass);
      if (![PULL, WATCH, PUSH].includes(klass)) {
        context.setResult(PresentationContextResult.RejectAbstractSyntaxNotSupported);
        return;
      }
      const syntaxes = context.getTransferSyntaxUids();
      const chosen = [TransferSyntax.ExplicitVRLittleEndian, TransferSyntax.ImplicitVRLittleEndian]
        .find((ts) => syntaxes.includes(ts));
      if (chosen) {
        context.setResult(PresentationContextResult.Accept, chosen);
      } else {
        context.setResult(PresentationContextResult.RejectTransferSyntaxesNotSupported);
      }
    });
    record({ op: 'associate', calling: association.getCallingAeTitle(), contexts: proposed });
    this.sendAssociationAccept();
  }

  cFindRequest(request, callback) {
    const responses = [];
    Object.entries(state.items).forEach(([uid, item]) => {
      if (item.state !== 'SCHEDULED') {
        return;
      }
      const pending = CFindResponse.fromRequest(request);
      pending.setDataset(new Dataset({ ...item.dataset, SOPClassUID: PUSH, SOPInstanceUID: uid, ProcedureStepState: item.state }));
      pending.setStatus(Status.Pending);
      responses.push(pending);
    });
    const final = CFindResponse.fromRequest(request);
    final.setStatus(Status.Success);
    responses.push(final);
    record({ op: 'find', sopClass: request.getAffectedSopClassUid(), status: 0, matches: responses.length - 1 });
    callback(responses);
  }

  nGetRequest(request, callback) {
    const uid = request.getRequestedSopInstanceUid();
    const item = state.items[uid];
    const response = NGetResponse.fromRequest(request);
    if (!item) {
      response.setStatus(0xc307);
    } else {
      response.setDataset(new Dataset({ ...item.dataset, SOPClassUID: PUSH, SOPInstanceUID: uid, ProcedureStepState: item.state }));
      response.setStatus(Status.Success);
    }
    record({ op: 'get', uid, requestedClass: request.getRequestedSopClassUid(), status: response.getStatus() });
    callback(response);
  }

  nSetRequest(request, callback) {
    const uid = request.getRequestedSopInstanceUid();
    const ds = request.getDataset() ? request.getDataset().getElements() : {};
    const item = state.items[uid];
    const response = NSetResponse.fromRequest(request);
    let status = 0;
    if (!item) {
      status = 0xc307;
    } else if (item.state === 'COMPLETED' || item.state === 'CANCELED') {
      status = 0xc300;
    } else if (item.state === 'SCHEDULED' && 'TransactionUID' in ds) {
      status = 0xc310;
    } else if (item.state === 'IN PROGRESS' && ds.TransactionUID !== item.tx) {
      status = 0xc301;
    } else {
      Object.entries(ds).forEach(([k, v]) => { if (k !== 'TransactionUID') { item.dataset[k] = v; } });
      save();
    }
    response.setStatus(status);
    record({ op: 'set', uid, requestedClass: request.getRequestedSopClassUid(), status, dataset: ds });
    callback(response);
    const progress = ((ds.ProcedureStepProgressInformationSequence || [])[0] || {}).ProcedureStepProgress;
    if (status === 0 && scenario.cancelAtProgress !== undefined && !state.cancelSent
        && Number(progress) >= scenario.cancelAtProgress) {
      state.cancelSent = true;
      save();
      setTimeout(() => sendEvent(uid, 2, { RequestingAE: 'REQUESTER', ReasonForCancellation: 'patient left' }), 50);
    }
  }

  nActionRequest(request, callback) {
    const uid = request.getRequestedSopInstanceUid();
    const action = request.getActionTypeId();
    const ds = request.getDataset() ? request.getDataset().getElements() : {};
    const item = state.items[uid];
    const response = NActionResponse.fromRequest(request);
    let status = 0;
    let comment = '';
    if (action === 3 || action === 4) {
      status = 0; // subscribe / unsubscribe: granted (events go to eventTarget)
    } else if (action !== 1) {
      status = 0x0123;
    } else if (!item) {
      status = 0xc307;
    } else {
      const want = ds.ProcedureStepState;
      const tx = ds.TransactionUID || '';
      if (want === 'IN PROGRESS') {
        if (!tx) {
          status = 0xc301;
        } else if (item.state === 'SCHEDULED') {
          if (scenario.claim === 'already-claimed') {
            item.state = 'IN PROGRESS';
            item.tx = OTHER_PERFORMER_TX; // another performer's claim landed first
            status = 0xc302;
          } else if (scenario.claim === 'no-response' && !state.silent) {
            item.state = 'IN PROGRESS'; // the claim lands, its response is lost
            item.tx = tx;
            state.silent = true;
            save();
            record({ op: 'action', uid, action, requestedClass: request.getRequestedSopClassUid(), status: null, dataset: ds });
            return;
          } else {
            item.state = 'IN PROGRESS';
            item.tx = tx;
          }
        } else {
          status = item.state === 'IN PROGRESS' ? 0xc302 : 0xc300;
        }
      } else if (want === 'COMPLETED' || want === 'CANCELED') {
        if (item.state === 'SCHEDULED') {
          status = 0xc310;
        } else if (!tx || tx !== item.tx) {
          status = 0xc301;
        } else if (item.state === want) {
          status = want === 'COMPLETED' ? 0xb306 : 0xb304;
        } else if (item.state !== 'IN PROGRESS') {
          status = 0xc300;
        } else {
          comment = finalProblems(item.dataset, want);
          if (!comment && want === 'COMPLETED' && state.refusals > 0) {
            state.refusals -= 1;
            comment = 'scripted: completion refused once';
          }
          if (comment) {
            status = 0xc304;
          } else {
            item.state = want;
          }
        }
      } else {
        status = 0xc303;
      }
      save();
    }
    response.setStatus(status);
    if (comment) {
      response.setErrorComment(comment.slice(0, 64));
    }
    record({ op: 'action', uid, action, requestedClass: request.getRequestedSopClassUid(), status, dataset: ds });
    callback(response);
  }

  associationReleaseRequested() {
    this.sendAssociationReleaseResponse();
  }
}

const server = new Server(TaskManager);
server.on('networkError', (e) => { process.stderr.write(`network error: ${e && e.message}\n`); });
server.listen(scenario.port);
process.stdout.write('listening\n');
if (restarted) {
  Object.keys(state.items).slice(0, 1).forEach(() => {
    sendEvent('1.2.840.10008.5.1.4.34.5', 4, { SCPStatus: 'RESTARTED', SubscriptionListStatus: 'WARM START',
      UnifiedProcedureStepListStatus: 'WARM START' });
  });
}
process.on('SIGTERM', () => { server.close(); process.exit(0); });
