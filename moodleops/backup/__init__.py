"""Platform backups to S3-compatible object storage (database dump, content-
addressed filedir blobs, the other moodledata folders, a manifest per run),
restores from a manifest, retention, and each school's end-of-agreement export."""
