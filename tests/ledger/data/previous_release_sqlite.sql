-- The ledger of the previous CardioNode release, before schema revisions (sqlite).
-- The statements that its Database ran on an empty database: Base.metadata.create_all of
-- `git show 1042ce2:node/ledger/schema.py` (1042ce2e94b1c5c7db2a1f6790e68488a12dd8e6), captured with
-- sqlalchemy.create_mock_engine for this dialect. No alembic_version table: `cardionode db upgrade`
-- adopts such a ledger (tests/ledger/test_migrations.py). Statements end with ';' at a line's end.

CREATE TABLE studies (
	study_uid VARCHAR(64) NOT NULL,
	state VARCHAR(16) NOT NULL,
	reason TEXT NOT NULL,
	rule VARCHAR(32),
	pipeline VARCHAR(64),
	run INTEGER NOT NULL,
	instance_count INTEGER NOT NULL,
	first_received_at DATETIME NOT NULL,
	last_received_at DATETIME NOT NULL,
	decided_at DATETIME,
	updated_at DATETIME NOT NULL,
	PRIMARY KEY (study_uid)
);

CREATE INDEX ix_studies_state ON studies (state);

CREATE TABLE events (
	id INTEGER NOT NULL,
	at DATETIME NOT NULL,
	entity VARCHAR(16) NOT NULL,
	entity_id VARCHAR(64) NOT NULL,
	from_state VARCHAR(16),
	to_state VARCHAR(16) NOT NULL,
	reason TEXT NOT NULL,
	rule VARCHAR(32),
	PRIMARY KEY (id)
);

CREATE INDEX ix_events_entity ON events (entity, entity_id);

CREATE TABLE rejections (
	id INTEGER NOT NULL,
	at DATETIME NOT NULL,
	calling_ae VARCHAR(16) NOT NULL,
	peer_address VARCHAR(64) NOT NULL,
	sop_class_uid VARCHAR(80) NOT NULL,
	sop_instance_uid VARCHAR(80) NOT NULL,
	study_uid VARCHAR(80) NOT NULL,
	status INTEGER NOT NULL,
	reason TEXT NOT NULL,
	PRIMARY KEY (id)
);

CREATE INDEX ix_rejections_at ON rejections (at);

CREATE TABLE series (
	series_uid VARCHAR(64) NOT NULL,
	study_uid VARCHAR(64) NOT NULL,
	routing JSON NOT NULL,
	instance_count INTEGER NOT NULL,
	first_received_at DATETIME NOT NULL,
	last_received_at DATETIME NOT NULL,
	PRIMARY KEY (series_uid),
	FOREIGN KEY(study_uid) REFERENCES studies (study_uid)
);

CREATE INDEX ix_series_study_uid ON series (study_uid);

CREATE TABLE jobs (
	id INTEGER NOT NULL,
	study_uid VARCHAR(64) NOT NULL,
	pipeline VARCHAR(64) NOT NULL,
	run INTEGER NOT NULL,
	state VARCHAR(16) NOT NULL,
	reason TEXT NOT NULL,
	attempts INTEGER NOT NULL,
	last_error TEXT NOT NULL,
	task_id VARCHAR(128),
	created_at DATETIME NOT NULL,
	updated_at DATETIME NOT NULL,
	PRIMARY KEY (id),
	FOREIGN KEY(study_uid) REFERENCES studies (study_uid)
);

CREATE INDEX ix_jobs_study_uid ON jobs (study_uid);

CREATE INDEX ix_jobs_state ON jobs (state);

CREATE TABLE instances (
	sop_instance_uid VARCHAR(64) NOT NULL,
	series_uid VARCHAR(64) NOT NULL,
	study_uid VARCHAR(64) NOT NULL,
	sop_class_uid VARCHAR(64) NOT NULL,
	transfer_syntax_uid VARCHAR(64) NOT NULL,
	path TEXT NOT NULL,
	size_bytes INTEGER NOT NULL,
	calling_ae VARCHAR(16) NOT NULL,
	received_at DATETIME NOT NULL,
	PRIMARY KEY (sop_instance_uid),
	FOREIGN KEY(series_uid) REFERENCES series (series_uid)
);

CREATE INDEX ix_instances_series_uid ON instances (series_uid);

CREATE INDEX ix_instances_study_uid ON instances (study_uid);

CREATE TABLE outputs (
	sop_instance_uid VARCHAR(64) NOT NULL,
	job_id INTEGER NOT NULL,
	study_uid VARCHAR(64) NOT NULL,
	series_uid VARCHAR(64) NOT NULL,
	sop_class_uid VARCHAR(64) NOT NULL,
	pipeline VARCHAR(64) NOT NULL,
	path TEXT NOT NULL,
	size_bytes INTEGER NOT NULL,
	created_at DATETIME NOT NULL,
	PRIMARY KEY (sop_instance_uid),
	FOREIGN KEY(job_id) REFERENCES jobs (id)
);

CREATE INDEX ix_outputs_study_uid ON outputs (study_uid);

CREATE INDEX ix_outputs_job_id ON outputs (job_id);

CREATE TABLE sends (
	id INTEGER NOT NULL,
	output_uid VARCHAR(64) NOT NULL,
	job_id INTEGER NOT NULL,
	destination VARCHAR(64) NOT NULL,
	state VARCHAR(16) NOT NULL,
	attempts INTEGER NOT NULL,
	next_attempt_at DATETIME,
	last_status INTEGER,
	last_error TEXT NOT NULL,
	peer_text TEXT DEFAULT '' NOT NULL,
	created_at DATETIME NOT NULL,
	updated_at DATETIME NOT NULL,
	PRIMARY KEY (id),
	CONSTRAINT uq_send_output_destination UNIQUE (output_uid, destination),
	FOREIGN KEY(output_uid) REFERENCES outputs (sop_instance_uid)
);

CREATE INDEX ix_sends_job_id ON sends (job_id);

CREATE INDEX ix_sends_output_uid ON sends (output_uid);

CREATE INDEX ix_sends_state ON sends (state);
