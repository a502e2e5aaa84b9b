-- Run once by the postgres image on an empty data volume: Orthanc's index gets its own
-- database beside spine-node's (POSTGRES_DB), owned by the same role (POSTGRES_USER).
CREATE DATABASE orthanc OWNER spine_node;
