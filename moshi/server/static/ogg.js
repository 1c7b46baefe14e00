// Ogg pages around Opus packets (RFC 3533, RFC 7845), both ways: the server speaks Ogg Opus on the websocket.

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let r = i << 24;
    for (let bit = 0; bit < 8; bit++) r = r & 0x80000000 ? (r << 1) ^ 0x04c11db7 : r << 1;
    table[i] = r >>> 0;
  }
  return table;
})();

function oggCrc(bytes) {
  let crc = 0;
  for (const byte of bytes) crc = ((crc << 8) ^ CRC_TABLE[((crc >>> 24) ^ byte) & 0xff]) >>> 0;
  return crc;
}

const ASCII = new TextEncoder();

// The identification header of a mono or stereo Opus stream.
export function opusHead(channels, inputSampleRate, preSkip = 312) {
  const head = new Uint8Array(19);
  const view = new DataView(head.buffer);
  head.set(ASCII.encode("OpusHead"), 0);
  head[8] = 1; // version
  head[9] = channels;
  view.setUint16(10, preSkip, true);
  view.setUint32(12, inputSampleRate, true);
  return head; // output gain 0, channel mapping family 0
}

export function opusTags(vendor) {
  const vendorBytes = ASCII.encode(vendor);
  const tags = new Uint8Array(8 + 4 + vendorBytes.length + 4);
  const view = new DataView(tags.buffer);
  tags.set(ASCII.encode("OpusTags"), 0);
  view.setUint32(8, vendorBytes.length, true);
  tags.set(vendorBytes, 12);
  return tags; // no user comments
}

// Writes one logical stream: each call to `page` returns the bytes of one page holding whole packets.
export class OggWriter {
  constructor(serial) {
    this.serial = serial >>> 0;
    this.sequence = 0;
  }

  page(packets, granulePosition, { first = false, last = false } = {}) {
    const lacing = [];
    for (const packet of packets) {
      for (let left = packet.length; ; left -= 255) {
        lacing.push(Math.min(left, 255));
        if (left < 255) break;
      }
    }
    if (lacing.length > 255) throw new Error(`${lacing.length} segments do not fit in one Ogg page`);
    const bodyLength = packets.reduce((total, packet) => total + packet.length, 0);
    const page = new Uint8Array(27 + lacing.length + bodyLength);
    const view = new DataView(page.buffer);
    page.set(ASCII.encode("OggS"), 0);
    page[5] = (first ? 0x02 : 0) | (last ? 0x04 : 0);
    view.setBigUint64(6, BigInt(granulePosition), true);
    view.setUint32(14, this.serial, true);
    view.setUint32(18, this.sequence++, true);
    page[26] = lacing.length;
    page.set(lacing, 27);
    let offset = 27 + lacing.length;
    for (const packet of packets) {
      page.set(packet, offset);
      offset += packet.length;
    }
    view.setUint32(22, oggCrc(page), true); // computed with the checksum field still zero
    return page;
  }
}

// Collects bytes of one logical stream as they arrive and returns the packets completed so far.
export class OggReader {
  constructor() {
    this.buffer = new Uint8Array(0);
    this.partialPacket = [];
  }

  push(bytes) {
    const joined = new Uint8Array(this.buffer.length + bytes.length);
    joined.set(this.buffer, 0);
    joined.set(bytes, this.buffer.length);
    const packets = [];
    let offset = 0;
    while (joined.length - offset >= 27) {
      if (String.fromCharCode(...joined.subarray(offset, offset + 4)) !== "OggS") {
        throw new Error("the server's audio is not an Ogg stream");
      }
      const segments = joined[offset + 26];
      if (joined.length - offset < 27 + segments) break;
      const lacing = joined.subarray(offset + 27, offset + 27 + segments);
      const bodyLength = lacing.reduce((total, value) => total + value, 0);
      const pageLength = 27 + segments + bodyLength;
      if (joined.length - offset < pageLength) break;
      let position = offset + 27 + segments;
      for (const value of lacing) {
        this.partialPacket.push(joined.subarray(position, position + value));
        position += value;
        if (value < 255) packets.push(this.takePacket());
      }
      offset += pageLength;
    }
    this.buffer = joined.slice(offset);
    return packets;
  }

  takePacket() {
    const length = this.partialPacket.reduce((total, part) => total + part.length, 0);
    const packet = new Uint8Array(length);
    let offset = 0;
    for (const part of this.partialPacket) {
      packet.set(part, offset);
      offset += part.length;
    }
    this.partialPacket = [];
    return packet;
  }
}
