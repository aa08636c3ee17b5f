// A UPS Event SCP on dcmjs-dimse (an independent DIMSE codec): accepts the UPS Event SOP class, answers every
// N-EVENT-REPORT Success and prints it as one JSON line {eventType, sopClass, uid, calling, info}.
//
// usage: node ups_event_receiver.js PORT AE_TITLE     (prints "listening" once it listens; stop it with SIGTERM)
'use strict';

const dimse = require('dcmjs-dimse');

const { Server, Scp } = dimse;
const { NEventReportResponse } = dimse.responses;
const { Status, PresentationContextResult, RejectResult, RejectSource, RejectReason, TransferSyntax } = dimse.constants;
const UPS_EVENT = '1.2.840.10008.5.1.4.34.6.4';
const [port, aeTitle] = [Number(process.argv[2]), process.argv[3]];

if (dimse.log) {
  dimse.log.level = 'error';
}

class EventReceiver extends Scp {
  associationRequested(association) {
    this.association = association;
    if (association.getCalledAeTitle() !== aeTitle) {
      this.sendAssociationReject(RejectResult.Permanent, RejectSource.ServiceUser, RejectReason.CalledAeNotRecognized);
      return;
    }
    association.getPresentationContexts().forEach((c) => {
      const context = association.getPresentationContext(c.id);
      if (context.getAbstractSyntaxUid() !== UPS_EVENT) {
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
    this.sendAssociationAccept();
  }

  nEventReportRequest(request, callback) {
    const dataset = request.getDataset();
    process.stdout.write(JSON.stringify({
      eventType: request.getEventTypeId(),
      sopClass: request.getAffectedSopClassUid(),
      uid: request.getAffectedSopInstanceUid(),
      calling: this.association ? this.association.getCallingAeTitle() : '',
      info: dataset ? dataset.getElements() : null,
    }) + '\n');
    const response = NEventReportResponse.fromRequest(request);
    response.setStatus(Status.Success);
    callback(response);
  }

  associationReleaseRequested() {
    this.sendAssociationReleaseResponse();
  }
}

const server = new Server(EventReceiver);
server.on('networkError', (e) => { process.stderr.write(`network error: ${e && e.message}\n`); });
server.listen(port);
process.stdout.write('listening\n');
process.on('SIGTERM', () => { server.close(); process.exit(0); });
