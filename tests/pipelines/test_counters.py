"""Reading a job's counters back (pipelines/counters.py): every part a runner reports counts."""
from apache_beam.metrics import monitoring_infos as mi

from captionbeam.pipelines.counters import BULK_NAMESPACE, sum_user_counters


def test_a_counter_reported_once_per_fused_stage_is_summed():
    """The Spark job service's answer for bulk over loose files and a tar shard (2.78): one transform's
    counter twice, once per stage after the Flatten; Beam's reader kept the last part (30 of 40)."""
    infos = [mi.int64_user_counter(BULK_NAMESPACE, "matched", 10, ptransform="CountMatched_60"),
             mi.int64_user_counter(BULK_NAMESPACE, "captioned", 30, ptransform="CountCaptioned_117"),
             mi.int64_user_counter(BULK_NAMESPACE, "captioned", 10, ptransform="CountCaptioned_117"),
             mi.int64_user_counter(BULK_NAMESPACE, "matched", 30, ptransform="CountMatched_60"),
             mi.int64_user_counter("captionbeam", "images_decoded", 40, ptransform="Decode_105"),
             mi.int64_counter(mi.ELEMENT_COUNT_URN, 7, pcollection="pc")]
    assert sum_user_counters(infos, BULK_NAMESPACE) == {"matched": 40, "captioned": 40}
    assert sum_user_counters(infos, "captionbeam") == {"images_decoded": 40}
