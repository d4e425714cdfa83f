"""Annotation parsers on small replicas of the real files (names, columns, line endings and quirks), checked
against expectations written out by hand; and malformed input: every bad line becomes an error entry naming
its file and line, a file of the wrong format raises."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mmvit.data.sources import annotations as ann
from mmvit.data.sources.annotations import KINETICS_TEMPLATE, parse_imagenet_val, parse_jsonl, read_class_file, read_class_index
from mmvit.data.sources.video_annotations import parse_hmdb51, parse_kinetics_csv, parse_ssv2, parse_ucf101


def rows(a):
    """(path, label, line) of every entry, the form the expectations are written in."""
    return [(e.path, e.label, e.line) for e in a.entries]


def errors(a):
    return {e.line: e.extra["error"] for e in a.entries if "error" in e.extra}


# ---------------------------------------------------------------------------------------------- Kinetics

K400_TRAIN = (
    "label,youtube_id,time_start,time_end,split,is_cc\n"
    "abseiling,0347ZoDXyP0,188,198,train,0\n"
    '"air drumming",-0bD1r2aQhA,10,20,train,0\n'
    "\n"
    "\"massaging person's head\",--07WQ2iBlw,1,11,train,0\n"
    '"passing American football (in game)",-1GGzdJXCro,4,14,train,1\n'
    '"opening, or closing, a door",AbCdEfGhIjK,0.0,10.0,train,0\n'
)


def test_kinetics_train_csv(tmp_path):
    f = tmp_path / "train.csv"
    f.write_text(K400_TRAIN)
    a = parse_kinetics_csv(str(f))
    assert a.classes is None and a.source == str(f)
    assert rows(a) == [
        ("0347ZoDXyP0_000188_000198.mp4", "abseiling", 2),
        ("-0bD1r2aQhA_000010_000020.mp4", "air drumming", 3),
        ("--07WQ2iBlw_000001_000011.mp4", "massaging person's head", 5),  # line 4 is blank
        ("-1GGzdJXCro_000004_000014.mp4", "passing American football (in game)", 6),
        ("AbCdEfGhIjK_000000_000010.mp4", "opening, or closing, a door", 7),
    ]
    assert a.entries[0].extra == {"youtube_id": "0347ZoDXyP0", "split": "train", "is_cc": "0",
                                  "time_start": 188, "time_end": 198}
    assert a.entries[3].extra["is_cc"] == "1"
    # The same file as it may arrive: CRLF line endings and a byte-order mark.
    g = tmp_path / "validate.csv"
    g.write_bytes(b"\xef\xbb\xbf" + K400_TRAIN.replace("\n", "\r\n").encode())
    assert rows(parse_kinetics_csv(str(g))) == rows(a)
    # Fractional times name the file by whole seconds, as the crawler's '%06d' % 9.9 == '000009' does.
    h = tmp_path / "float_times.csv"
    h.write_text("label,youtube_id,time_start,time_end,split\nabseiling,0347ZoDXyP0,9.9,19.5,train\n")
    assert rows(parse_kinetics_csv(str(h))) == [("0347ZoDXyP0_000009_000019.mp4", "abseiling", 2)]


def test_kinetics_path_templates(tmp_path):
    f = tmp_path / "train.csv"
    f.write_text(K400_TRAIN)
    per_class = parse_kinetics_csv(str(f), path_template="{label}/" + KINETICS_TEMPLATE)
    assert [e.path for e in per_class.entries][1:3] == [
        "air drumming/-0bD1r2aQhA_000010_000020.mp4", "massaging person's head/--07WQ2iBlw_000001_000011.mp4"]
    renamed = parse_kinetics_csv(str(f), path_template="{split}/{label_underscore}/{youtube_id}.mp4")
    assert [e.path for e in renamed.entries] == [
        "train/abseiling/0347ZoDXyP0.mp4", "train/air_drumming/-0bD1r2aQhA.mp4",
        "train/massaging_person's_head/--07WQ2iBlw.mp4", "train/passing_American_football_(in_game)/-1GGzdJXCro.mp4",
        "train/opening,_or_closing,_a_door/AbCdEfGhIjK.mp4"]
    assert [e.label for e in renamed.entries][1] == "air drumming"  # the label stays as written
    with pytest.raises(ValueError, match=r"unknown field.*'video'"):
        parse_kinetics_csv(str(f), path_template="{video}.mp4")


def test_kinetics_test_csv_without_labels(tmp_path):
    f = tmp_path / "test.csv"
    f.write_text("youtube_id,time_start,time_end,split\n--65_UAU7ao,0,10,test\n--6zxbYq5M4,39,49,test\n")
    a = parse_kinetics_csv(str(f))
    assert rows(a) == [("--65_UAU7ao_000000_000010.mp4", None, 2), ("--6zxbYq5M4_000039_000049.mp4", None, 3)]
    assert not errors(a)
    # A test file that keeps the label column but leaves it empty is unlabelled too.
    g = tmp_path / "test_with_column.csv"
    g.write_text("label,youtube_id,time_start,time_end,split\n,--65_UAU7ao,0,10,test\n")
    assert rows(parse_kinetics_csv(str(g))) == [("--65_UAU7ao_000000_000010.mp4", None, 2)]
    # Per-class folders cannot be named without a label: an error entry, not a guess.
    b = parse_kinetics_csv(str(f), path_template="{label}/" + KINETICS_TEMPLATE)
    assert [e.label for e in b.entries] == [None, None]
    assert errors(b)[2] == (f"{f}:2: path_template '{{label}}/{KINETICS_TEMPLATE}' needs {{label}}, "
                            "which this row does not have")


def test_kinetics_malformed_rows(tmp_path):
    f = tmp_path / "val.csv"
    f.write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "abseiling,0347ZoDXyP0,188,198,val\n"
        "opening, closing door,AbCdEfGhIjK,0,10,val\n"   # unquoted comma: one field too many
        "abseiling,ShortRow123,188\n"                   # missing columns
        "abseiling,BadTime1234,abc,198,val\n"
        ",NoLabel1234,0,10,val\n"
        "abseiling,,0,10,val\n"
        "\"air drumming\",-0bD1r2aQhA,10,20,val\n")
    a = parse_kinetics_csv(str(f))
    assert [(e.label, e.line) for e in a.entries] == [("abseiling", 2), (None, 3), (None, 4), (None, 5), (None, 6),
                                                      (None, 7), ("air drumming", 8)]
    assert errors(a) == {
        3: f"{f}:3: 6 fields, the header has 5: 'opening, closing door,AbCdEfGhIjK,0,10,val'",
        4: f"{f}:4: 3 fields, the header has 5: 'abseiling,ShortRow123,188'",
        5: f"{f}:5: time_start/time_end 'abc'/'198' are not times in seconds",
        6: f"{f}:6: empty label",
        7: f"{f}:7: empty youtube_id",
    }


def test_kinetics_wrong_header(tmp_path):
    f = tmp_path / "train.csv"
    f.write_text("path,label\nx.mp4,abseiling\n")
    with pytest.raises(ValueError, match=rf"{f}:1: not a Kinetics header \(no youtube_id, time_start, time_end"
                                         r" column\): 'path,label'"):
        parse_kinetics_csv(str(f))
    (tmp_path / "empty.csv").write_text("\n")
    with pytest.raises(ValueError, match="empty file"):
        parse_kinetics_csv(str(tmp_path / "empty.csv"))


# ---------------------------------------------------------------------------------- Something-Something v2

SSV2_LABELS = {  # written out of index order on purpose: classes follow the indices, not the key order
    "Putting something on something": "1",
    "Approaching something with your camera": "0",
    "Tipping something with something in it over, so something in it falls out": "3",
    "Putting something, something and something on the table": "2",
}
SSV2_CLASSES = ["Approaching something with your camera", "Putting something on something",
                "Putting something, something and something on the table",
                "Tipping something with something in it over, so something in it falls out"]


def write_ssv2(folder, labels_name="labels.json"):
    folder.mkdir(exist_ok=True)
    (folder / labels_name).write_text(json.dumps(SSV2_LABELS, indent=1))
    train = [
        {"id": "78687", "label": "holding potato next to vicks vaporub bottle... putting potato on bottle",
         "template": "Putting [something] on [something]", "placeholders": ["potato", "vicks vaporub bottle"]},
        {"id": "42326", "label": "approaching a mug with your camera",
         "template": "Approaching [something] with your camera", "placeholders": ["a mug"]},
        {"id": "100904", "label": "putting a pen, a cup and a key on the table",
         "template": "Putting [something], [something] and [something] on the table",
         "placeholders": ["a pen", "a cup", "a key"]},
        {"id": "3694", "label": "tipping a cup with water in it over, so water in it falls out",
         "template": "Tipping [something] with [something in it] over, so [something in it] falls out",
         "placeholders": ["a cup", "water", "water"]},
    ]
    (folder / "train.json").write_text(json.dumps(train, indent=4))
    (folder / "test.json").write_text(json.dumps([{"id": "1420"}, {"id": "1421"}]))
    return train


def test_ssv2_train_and_test(tmp_path):
    train = write_ssv2(tmp_path / "labels")
    a = parse_ssv2(str(tmp_path / "labels" / "train.json"))
    assert a.classes == SSV2_CLASSES
    assert rows(a) == [
        ("78687.webm", "Putting something on something", 1),
        ("42326.webm", "Approaching something with your camera", 2),
        ("100904.webm", "Putting something, something and something on the table", 3),
        ("3694.webm", "Tipping something with something in it over, so something in it falls out", 4),
    ]
    assert a.entries[0].extra == {"caption": train[0]["label"], "template": "Putting [something] on [something]",
                                  "placeholders": ["potato", "vicks vaporub bottle"]}
    t = parse_ssv2(str(tmp_path / "labels" / "test.json"), path_template="{id}.mp4")
    assert rows(t) == [("1420.mp4", None, 1), ("1421.mp4", None, 2)] and t.classes == SSV2_CLASSES
    # The older release names: something-something-v2-labels.json beside something-something-v2-train.json.
    write_ssv2(tmp_path / "old", labels_name="something-something-v2-labels.json")
    (tmp_path / "old" / "train.json").rename(tmp_path / "old" / "something-something-v2-train.json")
    old = parse_ssv2(str(tmp_path / "old" / "something-something-v2-train.json"))
    assert rows(old) == rows(a) and old.classes == SSV2_CLASSES


def test_ssv2_malformed_records(tmp_path):
    write_ssv2(tmp_path)
    records = [
        {"id": "1", "template": "Putting [something] on [something]"},
        {"id": "2", "template": "Putting [something] onto [something]"},       # no such class
        {"id": "3", "template": "putting [something] on [something]"},         # differs in case only
        {"id": "4", "label": "a caption but no template"},
        ["5", "Putting [something] on [something]"],
        {"template": "Putting [something] on [something]"},
        {"id": "7", "template": "Approaching [something] with your camera"},
    ]
    f = tmp_path / "validation.json"
    f.write_text(json.dumps(records))
    a = parse_ssv2(str(f))
    assert rows(a) == [("1.webm", "Putting something on something", 1), ("2.webm", None, 2), ("3.webm", None, 3),
                       ("4.webm", None, 4), ("", None, 5), ("", None, 6),
                       ("7.webm", "Approaching something with your camera", 7)]
    lab = tmp_path / "labels.json"
    assert errors(a) == {
        2: f"{f}:2: id 2: template 'Putting [something] onto [something]' -> 'Putting something onto something' "
           f"is not in {lab}",
        3: f"{f}:3: id 3: template 'putting [something] on [something]' -> 'putting something on something' "
           f"is not in {lab} (labels.json has 'Putting something on something')",
        4: f"{f}:4: id 4: no template (got None)",
        5: f"{f}:5: record is list, not an object: ['5', 'Putting [something] on [something]']",
        6: f"{f}:6: no usable id: None",
    }


def test_ssv2_bad_files(tmp_path):
    f = tmp_path / "train.json"
    f.write_text(json.dumps([{"id": "1", "template": "Putting [something] on [something]"}]))
    with pytest.raises(ValueError, match="no labels.json or something-something-v2-labels.json next to it"):
        parse_ssv2(str(f))
    (tmp_path / "labels.json").write_text('{"Putting something on something": "0", "Approaching": "0"}')
    with pytest.raises(ValueError, match="'Putting something on something' and 'Approaching' both have index 0"):
        parse_ssv2(str(f))
    (tmp_path / "labels.json").write_text('{"Putting something on something": "0", "Approaching": "2"}')
    with pytest.raises(ValueError, match=r"indices must be 0..1; missing \[1\]"):
        parse_ssv2(str(f))
    (tmp_path / "labels.json").write_text('{"Putting something on something": 0.0}')
    with pytest.raises(ValueError, match="has index 0.0, not a whole number"):
        parse_ssv2(str(f))
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['name'\]"):
        parse_ssv2(str(f), path_template="{name}.webm")
    g = tmp_path / "broken.json"
    g.write_text('[{"id": "1",\n "template": }]')
    with pytest.raises(ValueError, match=rf"{g}:2: not JSON"):
        parse_ssv2(str(g), labels=str(tmp_path / "labels.json"))
    g.write_text('{"id": "1"}')
    with pytest.raises(ValueError, match="expected a JSON list of records, got dict"):
        parse_ssv2(str(g))


# ------------------------------------------------------------------------------------------------ UCF101

# UCF101TrainTestSplits-RecognitionTask.zip ends lines with CRLF; some copies add an empty last line.
UCF_CLASSES = ["ApplyEyeMakeup", "ApplyLipstick", "Archery", "HandstandPushups", "YoYo"]


def write_ucf(folder):
    folder.mkdir(exist_ok=True)
    index = b"".join(b"%d %s\r\n" % (i + 1, n.encode()) for i, n in enumerate(UCF_CLASSES))
    (folder / "classInd.txt").write_bytes(index)
    (folder / "trainlist01.txt").write_bytes(
        b"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
        b"ApplyLipstick/v_ApplyLipstick_g08_c01.avi 2\r\n"
        b"HandstandPushups/v_HandStandPushups_g08_c01.avi 4\r\n"
        b"HandstandPushups/v_HandStandPushups_g25_c04.avi 4\r\n"
        b"YoYo/v_YoYo_g25_c05.avi 5\r\n"
        b"\r\n")
    (folder / "testlist01.txt").write_bytes(
        b"ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\n"
        b"HandstandPushups/v_HandStandPushups_g01_c01.avi\r\n"
        b"YoYo/v_YoYo_g07_c04.avi\r\n")


def test_ucf101_lists(tmp_path):
    write_ucf(tmp_path)
    train = parse_ucf101(str(tmp_path / "trainlist01.txt"))
    assert train.classes == UCF_CLASSES
    assert rows(train) == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "ApplyEyeMakeup", 1),
        ("ApplyLipstick/v_ApplyLipstick_g08_c01.avi", "ApplyLipstick", 2),
        ("HandstandPushups/v_HandStandPushups_g08_c01.avi", "HandstandPushups", 3),  # path kept as laid out
        ("HandstandPushups/v_HandStandPushups_g25_c04.avi", "HandstandPushups", 4),
        ("YoYo/v_YoYo_g25_c05.avi", "YoYo", 5),
    ]
    assert [e.extra for e in train.entries][2:4] == [{"group": 8, "clip": 1, "index": 4},
                                                     {"group": 25, "clip": 4, "index": 4}]
    test = parse_ucf101(str(tmp_path / "testlist01.txt"))
    assert rows(test) == [("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "ApplyEyeMakeup", 1),
                          ("HandstandPushups/v_HandStandPushups_g01_c01.avi", "HandstandPushups", 2),
                          ("YoYo/v_YoYo_g07_c04.avi", "YoYo", 3)]
    assert test.entries[1].extra == {"group": 1, "clip": 1}


def test_ucf101_malformed_lines(tmp_path):
    write_ucf(tmp_path / "annotations")
    f = tmp_path / "mylist.txt"
    f.write_text("Archery/v_Archery_g01_c01.avi 2\n"            # folder Archery (3) but label 2
                 "Unknown/v_Unknown_g01_c01.avi 1\n"
                 "v_YoYo_g01_c01.avi 5\n"                        # no class folder
                 "YoYo/v_YoYo_g01_c02.avi 9\n"                   # index out of range
                 "handstandpushups/v_HandStandPushups_g02_c01.avi\n"  # re-packed copy, lower-case folder
                 "Archery/v_Archery_g01_c02.avi 3\n")
    ci = str(tmp_path / "annotations" / "classInd.txt")
    a = parse_ucf101(str(f), class_index=ci)
    assert [(e.label, e.line) for e in a.entries] == [(None, 1), (None, 2), (None, 3), (None, 4),
                                                      ("HandstandPushups", 5), ("Archery", 6)]
    assert errors(a) == {
        1: f"{f}:1: label 2 is 'ApplyLipstick' in classInd.txt but the folder is 'Archery'",
        2: f"{f}:2: class folder 'Unknown' is not in {ci}",
        3: f"{f}:3: 'v_YoYo_g01_c01.avi' has no class folder",
        4: f"{f}:4: label 9 is no class in classInd.txt but the folder is 'YoYo'",
    }
    assert a.entries[4].extra == {"group": 2, "clip": 1, "folder": "handstandpushups"}
    with pytest.raises(ValueError, match="no classInd.txt next to it"):
        parse_ucf101(str(f))


def test_ucf101_bad_class_index(tmp_path):
    (tmp_path / "trainlist01.txt").write_text("YoYo/v_YoYo_g25_c05.avi 2\n")
    (tmp_path / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 YoYo\n1 Archery\n")
    with pytest.raises(ValueError, match=r"classInd.txt:3: index 1 already used on line 1"):
        parse_ucf101(str(tmp_path / "trainlist01.txt"))
    (tmp_path / "classInd.txt").write_text("1 ApplyEyeMakeup\nYoYo\n")
    with pytest.raises(ValueError, match=r"classInd.txt:2: expected '<index> <ClassName>', got 'YoYo'"):
        parse_ucf101(str(tmp_path / "trainlist01.txt"))


# ------------------------------------------------------------------------------------------------ HMDB51


def write_hmdb(root):
    d = root / "testTrainMulti_7030_splits"
    d.mkdir(parents=True)
    # Real names: punctuation and brackets in file names, underscores in class names. Copies differ in
    # trailing spaces and line endings.
    (d / "brush_hair_test_split1.txt").write_text(
        "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1 \n"
        "Brushing_Her_Hair__[_NEW_AUDIO_]_UPDATED!!!!_brush_hair_h_cm_np1_le_goo_1.avi 2 \n"
        "atempting_to_brush_my_hair_brush_hair_u_nm_np2_le_goo_1.avi 0 \n")
    (d / "cartwheel_test_split1.txt").write_text(
        "(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi 2 \n"
        "Acrobacias_de_un_fenomeno_cartwheel_f_cm_np1_ba_bad_8.avi 1 \n")
    (d / "fall_floor_test_split1.txt").write_text(
        "\n"
        "20060723sfjffbartsinger_fall_floor_f_cm_np1_ba_med_0.avi 1\r\n"
        "Bad_line_without_code.avi\n"
        "Bad_code_fall_floor_f_cm_np1_ba_med_1.avi 3\n")
    (d / "brush_hair_test_split2.txt").write_text("April_09_brush_hair_u_nm_np1_ba_goo_0.avi 2 \n")
    (d / "cartwheel_test_split2.txt").write_text("(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi 1 \n")
    (d / "fall_floor_test_split2.txt").write_text("20060723sfjffbartsinger_fall_floor_f_cm_np1_ba_med_0.avi 0 \n")
    return d


def test_hmdb51_subsets(tmp_path):
    d = write_hmdb(tmp_path)
    train = parse_hmdb51(str(d), split=1, subset="train")
    assert train.classes == ["brush_hair", "cartwheel", "fall_floor"]
    assert rows(train) == [
        ("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi", "brush_hair", 1),
        ("cartwheel/Acrobacias_de_un_fenomeno_cartwheel_f_cm_np1_ba_bad_8.avi", "cartwheel", 2),
        ("fall_floor/20060723sfjffbartsinger_fall_floor_f_cm_np1_ba_med_0.avi", "fall_floor", 2),
        ("fall_floor/Bad_line_without_code.avi", None, 3),
        ("fall_floor/Bad_code_fall_floor_f_cm_np1_ba_med_1.avi", None, 4),
    ]
    assert train.entries[1].extra == {"file": "cartwheel_test_split1.txt"}
    f = d / "fall_floor_test_split1.txt"
    assert errors(train) == {3: f"{f}:3: expected '<video> <0|1|2>', got 'Bad_line_without_code.avi'",
                             4: f"{f}:4: expected '<video> <0|1|2>', got 'Bad_code_fall_floor_f_cm_np1_ba_med_1.avi 3'"}
    test = parse_hmdb51(str(tmp_path), split=1, subset="test")   # the parent folder works too
    assert rows(test)[:2] == [
        ("brush_hair/Brushing_Her_Hair__[_NEW_AUDIO_]_UPDATED!!!!_brush_hair_h_cm_np1_le_goo_1.avi", "brush_hair", 2),
        ("cartwheel/(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi", "cartwheel", 1)]
    assert len(test.entries) == 4 and len(errors(test)) == 2  # malformed lines are reported in every subset
    unused = parse_hmdb51(str(d), split=1, subset="unused")
    assert rows(unused)[0] == ("brush_hair/atempting_to_brush_my_hair_brush_hair_u_nm_np2_le_goo_1.avi",
                               "brush_hair", 3)
    split2 = parse_hmdb51(str(d), split=2, subset="train")
    assert rows(split2) == [("cartwheel/(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi", "cartwheel", 1)]


def test_hmdb51_bad_arguments(tmp_path):
    d = write_hmdb(tmp_path)
    with pytest.raises(ValueError, match="split must be 1, 2 or 3"):
        parse_hmdb51(str(d), split=4)
    with pytest.raises(ValueError, match="subset must be one of"):
        parse_hmdb51(str(d), subset="val")
    with pytest.raises(ValueError, match=r"_test_split3.txt: no HMDB51 split files"):
        parse_hmdb51(str(d), split=3)


# ------------------------------------------------------------------------------------------------ ImageNet


def test_imagenet_class_index_json(tmp_path):
    f = tmp_path / "imagenet_class_index.json"
    # Keys out of order; two synsets share the display name "crane" (indices 134 and 517 in the real file).
    f.write_text('{"2": ["n03126707", "crane"], "0": ["n01440764", "tench"], "1": ["n02012849", "crane"],'
                 ' "3": ["n03710637", "maillot"]}')
    ci = read_class_index(str(f))
    assert ci.classes == ["n01440764", "n02012849", "n03126707", "n03710637"]
    assert ci.names == ["tench", "crane", "crane", "maillot"]
    f.write_text('{"0": ["n01440764", "tench"], "2": ["n02012849", "crane"]}')
    with pytest.raises(ValueError, match=r"indices must be 0..1, missing \[1\]"):
        read_class_index(str(f))
    f.write_text('{"0": ["n01440764", "tench"], "1": ["n01440764", "goldfish"]}')
    with pytest.raises(ValueError, match="synset 'n01440764' at key 1 already listed at key 0"):
        read_class_index(str(f))
    f.write_text('{"0": "n01440764"}')
    with pytest.raises(ValueError, match="entry '0'"):
        read_class_index(str(f))


def test_imagenet_synset_mapping_txt(tmp_path):
    f = tmp_path / "LOC_synset_mapping.txt"
    f.write_text("n01440764 tench, Tinca tinca\n"
                 "n01443537 goldfish, Carassius auratus\n"
                 "n01484850 great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias\n"
                 "\n")
    ci = read_class_index(str(f))
    assert ci.classes == ["n01440764", "n01443537", "n01484850"]
    assert ci.names == ["tench, Tinca tinca", "goldfish, Carassius auratus",
                        "great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias"]
    f.write_text("n01440764 tench\nn01443537 goldfish\nn01440764 tench again\n")
    with pytest.raises(ValueError, match="synset 'n01440764' at line 3 already listed at line 1"):
        read_class_index(str(f))


def test_imagenet_val_solution(tmp_path):
    f = tmp_path / "LOC_val_solution.csv"
    f.write_text("ImageId,PredictionString\n"
                 "ILSVRC2012_val_00008726,n02119789 255 142 454 329 n02119789 44 21 322 295 \n"
                 "ILSVRC2012_val_00000001,n01751748 156 48 272 332 \n"
                 "ILSVRC2012_val_00000002,n01751748 1 2 3 4 n09193705 5 6 7 8 \n"
                 "ILSVRC2012_val_00000003,\n"
                 "ILSVRC2012_val_00000004,n01751748 1 2 3\n")
    a = parse_imagenet_val(str(f))
    assert rows(a) == [("ILSVRC2012_val_00008726.JPEG", "n02119789", 2),
                       ("ILSVRC2012_val_00000001.JPEG", "n01751748", 3),
                       ("ILSVRC2012_val_00000002.JPEG", None, 4), ("ILSVRC2012_val_00000003.JPEG", None, 5),
                       ("ILSVRC2012_val_00000004.JPEG", None, 6)]
    assert [e.extra.get("boxes") for e in a.entries][:2] == [2, 1]
    assert errors(a) == {4: f"{f}:4: boxes of several classes: 'n01751748 1 2 3 4 n09193705 5 6 7 8 '",
                         5: f"{f}:5: no boxes: ''", 6: f"{f}:6: not 5 values a box: 'n01751748 1 2 3'"}
    g = tmp_path / "LOC_train_solution.csv"
    g.write_text("ImageId,PredictionString,Extra\nx,n01 1 2 3 4,y\n")
    with pytest.raises(ValueError, match=rf"{g}:1: expected the header ImageId,PredictionString"):
        parse_imagenet_val(str(g))


# -------------------------------------------------------------------------------- JSON Lines, class files


def test_jsonl(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text('{"path": "videos/a b.mp4", "label": " riding a bike ", "fps": 30}\n'
                 "\n"
                 '{"path": "img/1.jpg", "label": 7}\n'
                 '{"path": "img/2.jpg"}\n'
                 '{"path": "img/3.jpg", "label": null, "split": "test"}\n'
                 '{"path": "img/4.jpg", "label": 3\n'
                 '["img/5.jpg", 1]\n'
                 '{"label": 2}\n'
                 '{"path": "img/6.jpg", "label": true}\n'
                 '{"path": "img/7.jpg", "label": 1.5}\n'
                 '{"path": "img/8.jpg", "label": "  "}\n'
                 '{"path": "img/9.jpg", "label": "cat"}\n')
    a = parse_jsonl(str(f))
    assert a.classes is None
    assert rows(a) == [("videos/a b.mp4", "riding a bike", 1), ("img/1.jpg", 7, 3), ("img/2.jpg", None, 4),
                       ("img/3.jpg", None, 5), ("", None, 6), ("", None, 7), ("", None, 8), ("img/6.jpg", None, 9),
                       ("img/7.jpg", None, 10), ("img/8.jpg", None, 11), ("img/9.jpg", "cat", 12)]
    assert a.entries[0].extra == {"fps": 30} and a.entries[3].extra == {"split": "test"}
    assert set(errors(a)) == {6, 7, 8, 9, 10, 11}
    assert errors(a)[6].startswith(f"{f}:6: not JSON (Expecting ',' delimiter")
    assert errors(a)[7] == f"{f}:7: a JSON list, not an object: '[\"img/5.jpg\", 1]'"
    assert errors(a)[8] == f"{f}:8: no usable 'path': None"
    assert errors(a)[9] == f"{f}:9: 'label' must be a class name or an int, got True"
    custom = tmp_path / "custom.jsonl"
    custom.write_text('{"video": "a.mp4", "label_id": 4, "path": "ignored"}\n')
    c = parse_jsonl(str(custom), path_key="video", label_key="label_id")
    assert rows(c) == [("a.mp4", 4, 1)] and c.entries[0].extra == {"path": "ignored"}


def test_jsonl_not_jsonl(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text("path,label\nx.mp4,1\n")
    with pytest.raises(ValueError, match=rf"{f}:1: not JSON Lines \(no line is a JSON object\): 'path,label'"):
        parse_jsonl(str(f))
    f.write_bytes(b'{"path": "a.jpg", "label": 1}\n{"path": "\xff.jpg"}\n')
    with pytest.raises(ValueError, match=rf"{f}:2: not UTF-8 text"):
        parse_jsonl(str(f))


def test_read_class_file(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_text("abseiling\n\n  air drumming  \r\npassing American football (in game)\n")
    assert read_class_file(str(f)) == ["abseiling", "air drumming", "passing American football (in game)"]
    f.write_text("abseiling\nair drumming\n\nair drumming\n")
    with pytest.raises(ValueError, match=rf"{f}:4: class 'air drumming' already named on line 2"):
        read_class_file(str(f))


def test_module_is_pure_parsing():
    """The parsers import no torch, numpy or media library: load the file on its own and look."""
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('annotations', {ann.__file__!r})\n"
            "m = sys.modules['annotations'] = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(m)\n"
            "heavy = {'torch', 'numpy', 'PIL', 'decord', 'av', 'webdataset'} & set(sys.modules)\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True)
