// The page's client of /api/chat: microphone -> Opus (WebCodecs) -> Ogg pages -> websocket, and back to the speakers.
import { OggReader, OggWriter, opusHead, opusTags } from "./ogg.js";

const SAMPLE_RATE = 24000;
const KIND = { handshake: 0, audio: 1, text: 2, error: 5 };
const PLAYBACK_LEAD_S = 0.12; // how far ahead of the clock a restarted playback is scheduled

const $ = (id) => document.getElementById(id);
let session = null;

function setState(state, label) {
  document.body.dataset.state = state;
  $("state").textContent = label;
}

function showError(message) {
  $("error").textContent = message;
}

// The encoder's own OpusHead when it gives one (it knows its pre-skip), else a standard mono header.
function identificationHeader(metadata) {
  const description = metadata && metadata.decoderConfig && metadata.decoderConfig.description;
  if (description) {
    const bytes = ArrayBuffer.isView(description)
      ? new Uint8Array(description.buffer, description.byteOffset, description.byteLength)
      : new Uint8Array(description);
    if (bytes.length >= 19 && String.fromCharCode(...bytes.subarray(0, 8)) === "OpusHead") return bytes.slice();
  }
  return opusHead(1, SAMPLE_RATE);
}

class Session {
  constructor() {
    this.stats = { sentSeconds: 0, receivedSeconds: 0, textPieces: 0, gaps: 0 };
    this.handshakeDone = false;
    this.closed = false;
  }

  async start() {
    if (!("AudioEncoder" in window) || !("AudioDecoder" in window)) {
      throw new Error("this browser lacks WebCodecs audio (AudioEncoder / AudioDecoder); try a recent Chrome");
    }
    const encoderConfig = { codec: "opus", sampleRate: SAMPLE_RATE, numberOfChannels: 1, bitrate: 32000,
                            opus: { frameDuration: 20000 } };
    if (!(await AudioEncoder.isConfigSupported(encoderConfig)).supported) {
      throw new Error("this browser cannot encode Opus at 24 kHz with WebCodecs");
    }
    setState("connecting", "asking for the microphone");
    this.context = new AudioContext({ sampleRate: SAMPLE_RATE });
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    await this.context.audioWorklet.addModule("mic-worklet.js");
    this.playhead = 0;
    this.openEncoder(encoderConfig);
    this.openSocket();
    const source = this.context.createMediaStreamSource(this.stream);
    this.capture = new AudioWorkletNode(this.context, "mic-capture");
    this.capture.port.onmessage = (event) => this.onMicBlock(event.data);
    source.connect(this.capture).connect(this.context.destination); // the worklet outputs silence
    this.timer = setInterval(() => this.showStats(), 250);
  }

  openSocket() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    this.socket = new WebSocket(`${scheme}://${location.host}/api/chat`);
    this.socket.binaryType = "arraybuffer";
    setState("connecting", "connecting");
    this.socket.onopen = () => setState("waiting", "waiting for the model");
    this.socket.onmessage = (event) => this.onMessage(new Uint8Array(event.data));
    this.socket.onerror = () => showError("websocket error (is the server running?)");
    this.socket.onclose = (event) => {
      const why = event.reason ? `: ${event.reason}` : "";
      this.stop(event.code === 1000 ? "idle" : "error", `closed (code ${event.code}${why})`);
    };
  }

  openEncoder(config) {
    this.writer = new OggWriter(Math.floor(Math.random() * 2 ** 32));
    this.headerSent = false;
    this.granule = 0;
    this.micSamples = 0;
    this.encoder = new AudioEncoder({
      output: (chunk, metadata) => this.onPacket(chunk, metadata),
      error: (error) => this.fail(`Opus encoder: ${error.message}`),
    });
    this.encoder.configure(config);
  }

  onMicBlock(block) {
    if (!this.handshakeDone || this.closed) return; // audio before the handshake would be heard by nobody
    const data = new AudioData({ format: "f32-planar", sampleRate: SAMPLE_RATE, numberOfFrames: block.length,
                                 numberOfChannels: 1, timestamp: (this.micSamples / SAMPLE_RATE) * 1e6, data: block });
    this.micSamples += block.length;
    this.encoder.encode(data);
    data.close();
  }

  onPacket(chunk, metadata) {
    if (this.socket.readyState !== WebSocket.OPEN) return;
    if (!this.headerSent) {
      const head = identificationHeader(metadata);
      this.send(this.writer.page([head], 0, { first: true }));
      this.send(this.writer.page([opusTags("moshi fork web page")], 0));
      this.granule = new DataView(head.buffer, head.byteOffset).getUint16(10, true); // starts at the pre-skip
      this.headerSent = true;
    }
    const packet = new Uint8Array(chunk.byteLength);
    chunk.copyTo(packet);
    const seconds = (chunk.duration || 20000) / 1e6;
    this.granule += Math.round(seconds * 48000); // Ogg Opus counts granules at 48 kHz
    this.send(this.writer.page([packet], this.granule));
    this.stats.sentSeconds += seconds;
  }

  send(page) {
    const message = new Uint8Array(page.length + 1);
    message[0] = KIND.audio;
    message.set(page, 1);
    this.socket.send(message);
  }

  onMessage(message) {
    const kind = message[0];
    const payload = message.subarray(1);
    if (kind === KIND.handshake) {
      this.handshakeDone = true;
      this.openDecoder();
      setState("connected", "connected: talk!");
    } else if (kind === KIND.audio) {
      for (const packet of this.reader.push(payload)) this.onServerPacket(packet);
    } else if (kind === KIND.text) {
      this.stats.textPieces += 1;
      const transcript = $("transcript");
      transcript.textContent += new TextDecoder().decode(payload);
      transcript.scrollTop = transcript.scrollHeight;
    } else if (kind === KIND.error) {
      showError(`server: ${new TextDecoder().decode(payload)}`);
    }
  }

  openDecoder() {
    this.reader = new OggReader();
    this.serverPackets = 0;
    this.decoder = new AudioDecoder({
      output: (data) => this.play(data),
      error: (error) => this.fail(`Opus decoder: ${error.message}`),
    });
  }

  onServerPacket(packet) {
    const index = this.serverPackets++;
    if (index === 0) {
      this.decoder.configure({ codec: "opus", sampleRate: 48000, numberOfChannels: packet[9] || 1,
                               description: packet });
    } else if (index > 1) { // packet 1 holds the comment header
      this.decoder.decode(new EncodedAudioChunk({ type: "key", timestamp: index * 80000, data: packet }));
    }
  }

  play(data) {
    const buffer = this.context.createBuffer(1, data.numberOfFrames, data.sampleRate);
    data.copyTo(buffer.getChannelData(0), { planeIndex: 0, format: "f32-planar" });
    data.close();
    const now = this.context.currentTime;
    if (this.playhead < now + 0.01) {
      if (this.playhead > 0) this.stats.gaps += 1;
      this.playhead = now + PLAYBACK_LEAD_S;
    }
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.context.destination);
    source.start(this.playhead);
    this.playhead += buffer.duration;
    this.stats.receivedSeconds += buffer.duration;
  }

  showStats() {
    $("stat-sent").textContent = this.stats.sentSeconds.toFixed(1);
    $("stat-received").textContent = this.stats.receivedSeconds.toFixed(1);
    $("stat-text").textContent = String(this.stats.textPieces);
    const ahead = this.context ? Math.max(0, this.playhead - this.context.currentTime) : 0;
    $("stat-ahead").textContent = String(Math.round(ahead * 1000));
    $("stat-gaps").textContent = String(this.stats.gaps);
  }

  fail(message) {
    showError(message);
    this.stop("error", "error");
  }

  stop(state = "idle", label = "stopped") {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    this.showStats();
    if (this.socket && this.socket.readyState <= WebSocket.OPEN) this.socket.close(1000, "the user stopped");
    if (this.stream) for (const track of this.stream.getTracks()) track.stop();
    for (const codec of [this.encoder, this.decoder]) if (codec && codec.state !== "closed") codec.close();
    if (this.context) this.context.close();
    setState(state, label);
    $("toggle").textContent = "Start";
    session = null;
  }
}

$("toggle").addEventListener("click", async () => {
  if (session) {
    session.stop();
    return;
  }
  showError("");
  $("transcript").textContent = "";
  session = new Session();
  $("toggle").textContent = "Stop";
  try {
    await session.start();
  } catch (error) {
    session.fail(error.message || String(error));
  }
});
