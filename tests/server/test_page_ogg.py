"""The web page's Ogg code (`moshi/server/static/ogg.js`, run by Node) against the pages sphn writes: the writer
rebuilds them byte for byte (header, lacing, CRC-32) and the reader takes the packets back out. sphn does not check
CRCs when reading, so the browser test alone would not catch a wrong one."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess

import numpy as np
import pytest
import sphn

from moshi.server.app import bundled_page_dir

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="runs the page's JavaScript with the node binary")

NODE_SCRIPT = """
import { OggReader, OggWriter } from "%(module)s";
const input = JSON.parse(process.argv[1]);
const fromHex = (hex) => Uint8Array.from(hex.match(/../g).map((byte) => parseInt(byte, 16)));
const toHex = (bytes) => Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
const writer = new OggWriter(input.serial);
const rebuilt = input.pages.map((page) => toHex(writer.page(page.packets.map(fromHex), BigInt(page.granule),
                                                            { first: page.first, last: page.last })));
const reader = new OggReader();
const stream = fromHex(input.stream);
const packets = [];
for (let start = 0; start < stream.length; start += 97) {  // arbitrary cuts, as messages may split pages
  packets.push(...reader.push(stream.subarray(start, start + 97)).map(toHex));
}
console.log(JSON.stringify({ rebuilt, packets }));
"""


def parse_pages(stream: bytes) -> list[dict]:
    """Header fields and packets of each Ogg page (pages here hold whole packets)."""
    pages, offset = [], 0
    while offset < len(stream):
        flags, granule, serial, _, _, segments = struct.unpack_from("<BqIIIB", stream, offset + 5)
        lacing = stream[offset + 27: offset + 27 + segments]
        body, packets, packet = offset + 27 + segments, [], b""
        for value in lacing:
            packet += stream[body: body + value]
            body += value
            if value < 255:
                packets.append(packet.hex())
                packet = b""
        pages.append({"bytes": stream[offset:body], "flags": flags, "granule": granule, "serial": serial,
                      "packets": packets})
        offset = body
    return pages


def test_ogg_js_writes_and_reads_the_pages_sphn_writes() -> None:
    writer = sphn.OpusStreamWriter(24000)
    rng = np.random.default_rng(0)
    stream = b"".join(writer.append_pcm((0.2 * rng.standard_normal(1920)).astype(np.float32)) for _ in range(6))
    pages = parse_pages(stream)
    assert len(pages) >= 8 and pages[0]["flags"] == 2  # OpusHead, OpusTags, then audio
    request = {"serial": pages[0]["serial"], "stream": stream.hex(), "pages": [
        {"packets": page["packets"], "granule": str(page["granule"]), "first": bool(page["flags"] & 2),
         "last": bool(page["flags"] & 4)} for page in pages]}
    module = (bundled_page_dir() / "ogg.js").as_uri()
    result = subprocess.run([NODE, "--input-type=module", "-e", NODE_SCRIPT % {"module": module}, json.dumps(request)],
                            capture_output=True, text=True, timeout=60, check=True)
    output = json.loads(result.stdout)
    assert output["rebuilt"] == [page["bytes"].hex() for page in pages]
    assert output["packets"] == [packet for page in pages for packet in page["packets"]]
    assert bytes.fromhex(output["packets"][0]).startswith(b"OpusHead")
