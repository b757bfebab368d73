#!/usr/bin/env python3
"""Independent check of shenhe's image labels with Pillow.

Usage: check_xmp.py FILE...   Exits 0 when every file decodes with Pillow and carries exactly one
TC260:AIGC XMP property (namespace http://www.tc260.org.cn/ns/AIGC/1.0/) whose value is a JSON object
with the seven GB 45438 Appendix E fields in order; exits 1 otherwise, 2 when Pillow is missing.
"""
import json
import sys
import xml.etree.ElementTree as ET

try:
    from PIL import Image
except ImportError:
    print("check_xmp.py: Pillow is not installed: python3 -m pip install Pillow", file=sys.stderr)
    sys.exit(2)

NS = "http://www.tc260.org.cn/ns/AIGC/1.0/"
FIELDS = ["Label", "ContentProducer", "ProduceID", "ReservedCode1",
          "ContentPropagator", "PropagateID", "ReservedCode2"]


def xmp_of(im):
    raw = im.info.get("XML:com.adobe.xmp") or im.info.get("xmp")
    if raw is None:
        return None
    return raw.decode("utf-8") if isinstance(raw, bytes) else raw


def check(path):
    with Image.open(path) as im:
        fmt = im.format
        im.load()  # decodes pixels; PNG chunk CRCs are checked while reading
        xmp = xmp_of(im)
    if xmp is None:
        return f"{path}: {fmt}: no XMP packet"
    root = ET.fromstring(xmp.strip("\ufeff").split("?>", 1)[1].rsplit("<?xpacket", 1)[0]
                         if xmp.lstrip("\ufeff").startswith("<?xpacket") else xmp)
    values = [el.text or "" for el in root.iter(f"{{{NS}}}AIGC")]
    for el in root.iter():
        if f"{{{NS}}}AIGC" in el.attrib:
            values.append(el.attrib[f"{{{NS}}}AIGC"])
    if len(values) != 1:
        return f"{path}: {fmt}: {len(values)} TC260:AIGC values, expected 1"
    record = json.loads(values[0])
    if list(record.keys()) != FIELDS:
        return f"{path}: {fmt}: fields {list(record.keys())}, expected {FIELDS}"
    if not all(isinstance(v, str) for v in record.values()):
        return f"{path}: {fmt}: non-string value"
    print(f"{path}: {fmt}: ok, ProduceID={record['ProduceID']}")
    return None


def main(paths):
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    failures = [msg for msg in (check(p) for p in paths) if msg]
    for msg in failures:
        print(msg, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
