"""captionbeam.pipelines: the Beam jobs (features, captions, pack, bulk) and their shared transforms."""
