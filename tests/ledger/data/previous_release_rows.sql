-- Rows as the previous CardioNode release (1042ce2) wrote them: one study processed and sent to one
-- destination, one refused instance. Both dialects; ids of jobs, sends, events and rejections come
-- from the database (as the release's stores left them), so new rows after an upgrade must get new ids.
INSERT INTO studies (study_uid, state, reason, rule, pipeline, run, instance_count, first_received_at, last_received_at, decided_at, updated_at)
VALUES ('1.9', 'done', 'results sent', 'expected_series', 'spect_mpi', 1, 2, '2026-12-01 10:00:00', '2026-12-01 10:00:05', '2026-12-01 10:00:06', '2026-12-01 10:01:00');
INSERT INTO series (series_uid, study_uid, routing, instance_count, first_received_at, last_received_at)
VALUES ('1.9.1', '1.9', '{"modality": "NM", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.20", "image_type": ["ORIGINAL", "PRIMARY", "RECON TOMO"]}', 2, '2026-12-01 10:00:00', '2026-12-01 10:00:05');
INSERT INTO instances (sop_instance_uid, series_uid, study_uid, sop_class_uid, transfer_syntax_uid, path, size_bytes, calling_ae, received_at)
VALUES ('1.9.1.1', '1.9.1', '1.9', '1.2.840.10008.5.1.4.1.1.20', '1.2.840.10008.1.2.1', '/spool/1.9.1.1.dcm', 1000, 'PACS', '2026-12-01 10:00:00');
INSERT INTO instances (sop_instance_uid, series_uid, study_uid, sop_class_uid, transfer_syntax_uid, path, size_bytes, calling_ae, received_at)
VALUES ('1.9.1.2', '1.9.1', '1.9', '1.2.840.10008.5.1.4.1.1.20', '1.2.840.10008.1.2.1', '/spool/1.9.1.2.dcm', 1000, 'PACS', '2026-12-01 10:00:05');
INSERT INTO jobs (study_uid, pipeline, run, state, reason, attempts, last_error, task_id, created_at, updated_at)
VALUES ('1.9', 'spect_mpi', 1, 'sent', 'all results sent', 1, '', 't-1', '2026-12-01 10:00:06', '2026-12-01 10:01:00');
INSERT INTO outputs (sop_instance_uid, job_id, study_uid, series_uid, sop_class_uid, pipeline, path, size_bytes, created_at)
VALUES ('2.25.1', 1, '1.9', '2.25.10', '1.2.840.10008.5.1.4.1.1.88.34', 'spect_mpi', '/outbox/sr.dcm', 5000, '2026-12-01 10:00:30');
INSERT INTO sends (output_uid, job_id, destination, state, attempts, next_attempt_at, last_status, last_error, created_at, updated_at)
VALUES ('2.25.1', 1, 'pacs', 'sent', 2, NULL, 0, '', '2026-12-01 10:00:31', '2026-12-01 10:01:00');
INSERT INTO events (at, entity, entity_id, from_state, to_state, reason, rule)
VALUES ('2026-12-01 10:00:00', 'study', '1.9', NULL, 'receiving', 'first instance received', NULL);
INSERT INTO events (at, entity, entity_id, from_state, to_state, reason, rule)
VALUES ('2026-12-01 10:00:06', 'study', '1.9', 'receiving', 'complete', 'all series received', 'expected_series');
INSERT INTO events (at, entity, entity_id, from_state, to_state, reason, rule)
VALUES ('2026-12-01 10:01:00', 'job', '1', 'reported', 'sent', 'all results sent', NULL);
INSERT INTO rejections (at, calling_ae, peer_address, sop_class_uid, sop_instance_uid, study_uid, status, reason)
VALUES ('2026-12-01 09:59:00', 'PACS', '10.0.0.1', '1.2.3', '1.2.3.4', '1.9', 290, 'SOP class 1.2.3 is not stored by this node');
