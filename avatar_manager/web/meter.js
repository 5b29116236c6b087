// Level meters on audio tracks: the avatar's voice, so a person sees it speak even with the sound
// off, and the microphone, so they see what it picks up. One AudioContext for the page.
let context = null;

// Call it inside a click or key press at least once: browsers start audio only after one.
export function wakeAudio() {
  context ??= new AudioContext();
  context.resume().catch(() => {});
}

// Shows the track's loudness on the <meter> until the returned function is called.
export function follow(track, meter) {
  wakeAudio();
  const analyser = context.createAnalyser();
  analyser.fftSize = 2048;
  const source = context.createMediaStreamSource(new MediaStream([track]));
  source.connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  let value = 0;
  const timer = setInterval(() => {
    analyser.getFloatTimeDomainData(samples);
    const rms = Math.sqrt(samples.reduce((sum, s) => sum + s * s, 0) / samples.length);
    value = Math.max(Math.min(1, rms * 4), value * 0.8);  // fast up, slow down: speech reads as a bar
    meter.value = value;
  }, 100);
  return () => {
    clearInterval(timer);
    source.disconnect();
    meter.value = 0;
  };
}
