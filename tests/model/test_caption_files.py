"""Caption file parsers: Flickr8k token, Kaggle CSV, COCO JSON, JSON lines; format detection; split files."""
import json

import pytest

from captionbeam.model.caption_files import (CaptionFileError, CaptionRow, detect_format, group, image_id, iter_rows, parse,
                                 parse_coco, parse_flickr8k, parse_jsonl, parse_kaggle, parse_split_file)

FLICKR = (
    "1000268201_693b08cb0e.jpg#0\tA child in a pink dress is climbing up a set of stairs in an entry way .\n"
    "1000268201_693b08cb0e.jpg#1\tA girl going into a wooden building .\n"
    "2258277193_586949ec62.jpg.1#0\tpeople waiting for the subway\n"
    "2258277193_586949ec62.jpg.1#1\tSome people looking out windows in a large building .\n"
    "\n"
    "3385593926_d3e9c21170.jpg#0\tA dog runs, then stops\t (a tab inside)\r\n"
)


def test_image_id_strips_extension_and_quirk():
    assert image_id("1000268201_693b08cb0e.jpg") == "1000268201_693b08cb0e"
    assert image_id("2258277193_586949ec62.jpg.1") == "2258277193_586949ec62"
    assert image_id("gs://b/dir/x.JPEG") == "x"
    assert image_id("dir\\win.png") == "win"
    assert image_id("no_extension") == "no_extension"


def test_flickr8k_including_the_jpg_1_line():
    pairs = list(parse_flickr8k(FLICKR, "Flickr8k.token.txt"))
    assert pairs[0] == ("1000268201_693b08cb0e",
                        "A child in a pink dress is climbing up a set of stairs in an entry way .")
    assert pairs[2] == ("2258277193_586949ec62", "people waiting for the subway")
    assert pairs[4] == ("3385593926_d3e9c21170", "A dog runs, then stops\t (a tab inside)")
    assert len(pairs) == 5
    grouped = group(pairs)
    assert list(grouped) == ["1000268201_693b08cb0e", "2258277193_586949ec62", "3385593926_d3e9c21170"]
    assert len(grouped["2258277193_586949ec62"]) == 2


def test_flickr8k_malformed_lines_name_file_and_line():
    with pytest.raises(CaptionFileError, match=r"tok.txt:2: expected '<file>#<n><TAB><caption>'"):
        list(parse_flickr8k("a.jpg#0\tok\nno tab here\n", "tok.txt"))
    with pytest.raises(CaptionFileError, match=r"tok.txt:1: empty caption for 'a'"):
        list(parse_flickr8k("a.jpg#0\t   \n", "tok.txt"))
    with pytest.raises(CaptionFileError, match=r"tok.txt:1: empty image name"):
        list(parse_flickr8k("#0\tcaption\n", "tok.txt"))


def test_iter_rows_is_tolerant_and_keeps_file_order():
    text = "a.jpg#0\tfirst\nbroken line\nb.jpg#0\t\na.jpg#1\tsecond\n"
    rows = list(iter_rows(text, "flickr8k", "f.txt"))
    assert [type(r) for r in rows] == [CaptionRow, CaptionFileError, CaptionFileError, CaptionRow]
    assert rows[0] == CaptionRow("a", "first", 1) and rows[3] == CaptionRow("a", "second", 4)
    assert "f.txt:2" in str(rows[1]) and "f.txt:3" in str(rows[2])
    # the strict parser raises the first error
    with pytest.raises(CaptionFileError, match="f.txt:2"):
        parse(text, "flickr8k", "f.txt")


def test_kaggle_csv_with_quotes_and_commas():
    text = ('image,caption\n'
            '1000268201_693b08cb0e.jpg,"A child in a pink dress, climbing ."\n'
            '1000268201_693b08cb0e.jpg,A girl going into a wooden building , unquoted comma\n'
            '\n'
            '2.jpg,"multi\nline caption"\n')
    pairs = list(parse_kaggle(text, "captions.txt"))
    assert pairs == [("1000268201_693b08cb0e", "A child in a pink dress, climbing ."),
                     ("1000268201_693b08cb0e", "A girl going into a wooden building , unquoted comma"),
                     ("2", "multi\nline caption")]


def test_kaggle_errors():
    with pytest.raises(CaptionFileError, match=r"c.csv:1: expected a CSV header 'image,caption'"):
        list(parse_kaggle("file,text\na.jpg,x\n", "c.csv"))
    with pytest.raises(CaptionFileError, match=r"c.csv:3: expected 'image,caption'"):
        list(parse_kaggle("image,caption\na.jpg,ok\nonly_one_column\n", "c.csv"))
    with pytest.raises(CaptionFileError, match=r"c.csv:2: empty caption"):
        list(parse_kaggle("image,caption\na.jpg,  \n", "c.csv"))


def test_coco_json():
    doc = {"images": [{"id": 391895, "file_name": "COCO_val2014_000000391895.jpg"}, {"id": 7, "file_name": "b.png"}],
           "annotations": [{"image_id": 391895, "id": 1, "caption": "A man riding a bike. "},
                           {"image_id": 7, "id": 2, "caption": "A cat"},
                           {"image_id": 391895, "id": 3, "caption": "Someone on a bicycle"}]}
    pairs = list(parse_coco(json.dumps(doc), "captions_val2014.json"))
    assert pairs == [("COCO_val2014_000000391895", "A man riding a bike."), ("b", "A cat"),
                     ("COCO_val2014_000000391895", "Someone on a bicycle")]
    # no images list: the numeric id is the image id
    assert list(parse_coco(json.dumps({"annotations": [{"image_id": 5, "caption": "x y"}]}))) == [("5", "x y")]


def test_coco_errors():
    with pytest.raises(CaptionFileError, match=r"c.json: not valid COCO JSON"):
        list(parse_coco("{not json", "c.json"))
    with pytest.raises(CaptionFileError, match=r"needs an 'annotations' list"):
        list(parse_coco(json.dumps({"images": []}), "c.json"))
    doc = {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 2, "caption": "x"}]}
    with pytest.raises(CaptionFileError, match=r"annotations\[0\]: image_id 2 is not in 'images'"):
        list(parse_coco(json.dumps(doc), "c.json"))
    doc = {"annotations": [{"image_id": 1}]}
    with pytest.raises(CaptionFileError, match=r"annotations\[0\]: expected an object with 'image_id' and 'caption'"):
        list(parse_coco(json.dumps(doc), "c.json"))


def test_jsonl_both_shapes_and_errors():
    text = ('{"image_id": "a.jpg", "captions": ["one", "two"]}\n'
            '{"image_id": "b", "caption": "three"}\n')
    assert list(parse_jsonl(text)) == [("a", "one"), ("a", "two"), ("b", "three")]
    with pytest.raises(CaptionFileError, match=r"x.jsonl:2: not a JSON object"):
        list(parse_jsonl('{"image_id": "a", "caption": "x"}\n{oops\n', "x.jsonl"))
    with pytest.raises(CaptionFileError, match=r"x.jsonl:1: expected an object with 'image_id'"):
        list(parse_jsonl('["a", "b"]\n', "x.jsonl"))
    with pytest.raises(CaptionFileError, match=r"x.jsonl:1: expected 'caption'"):
        list(parse_jsonl('{"image_id": "a"}\n', "x.jsonl"))


def test_detect_format():
    assert detect_format("Flickr8k.token.txt", FLICKR[:200]) == "flickr8k"
    assert detect_format("captions.txt", "image,caption\na.jpg,x\n") == "kaggle"
    assert detect_format("captions.txt", "\ufeffimage, caption\na.jpg,x\n") == "kaggle"
    assert detect_format("captions_train2014.json", '{\n  "info": {},\n  "images": [') == "coco"
    assert detect_format("data", '{"images": [], "annotations": []}') == "coco"  # one-line COCO
    assert detect_format("data", '{"image_id": "a", "caption": "x"}\n{"image_id": "b"') == "jsonl"
    assert detect_format("refs.jsonl", "") == "jsonl"


def test_parse_dispatch_and_unknown_format():
    assert parse("image,caption\na.jpg,x\n", "auto", "c.csv") == [("a", "x")]
    assert parse("\ufeffa.jpg#0\tx\n", "auto", "t.txt") == [("a", "x")]  # BOM tolerated
    with pytest.raises(CaptionFileError, match="unknown caption format 'xml'"):
        parse("", "xml")


def test_split_file():
    assert parse_split_file("\ufeffa.jpg\n\n2258277193_586949ec62.jpg.1\r\nc.jpg  \n") == [
        "a", "2258277193_586949ec62", "c"]


def test_an_image_id_with_a_line_break_is_a_malformed_row_not_a_broken_join_list():
    text = "\n".join(json.dumps(r) for r in ({"image_id": "ok", "caption": "a dog"},
                                             {"image_id": "two\nlines", "caption": "a cat"},
                                             {"image_id": "tab\there", "caption": "a cow"}))
    rows = list(iter_rows(text, "jsonl", source="c.jsonl"))
    assert isinstance(rows[0], CaptionRow) and rows[0].image_id == "ok"
    assert [type(r).__name__ for r in rows[1:]] == ["CaptionFileError", "CaptionFileError"]
    assert "line break" in str(rows[1]) and "c.jsonl" in str(rows[1])
