-- test/replicas.test.ts: one row the replicas read back, made before the replicas are, so every test can run alone.
CREATE TABLE replicas_test (id int PRIMARY KEY, v int NOT NULL);
INSERT INTO replicas_test VALUES (1, 0);
