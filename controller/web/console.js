// Corral's web VNC console: noVNC (served by the controller from the npm package, no CDN) on
// a WebSocket to /websockify, which needs the single-use token `corral vnc NAME --web` made.
// The token comes in the URL's fragment, which the browser never sends to a server.
import RFB from './novnc/core/rfb.js';

const status = document.getElementById('status');
const token = new URLSearchParams(window.location.hash.slice(1)).get('token') || '';
// The token is used up by this connection; keep it out of the history anyway.
window.history.replaceState(null, '', window.location.pathname);

function show(text, state) {
    status.textContent = text;
    document.body.dataset.state = state;
}

if (!token) {
    show('no console token in this link: make one with `corral vnc NAME --web`', 'failed');
} else {
    const scheme = window.location.protocol === 'https:' ? 'wss://' : 'ws://';
    const url = scheme + window.location.host + '/websockify?token=' + encodeURIComponent(token);
    const rfb = new RFB(document.getElementById('screen'), url, { wsProtocols: ['binary'], shared: true });
    rfb.scaleViewport = true;
    rfb.addEventListener('connect', () => show('connected', 'connected'));
    rfb.addEventListener('disconnect', (e) => show(e.detail.clean ? 'disconnected'
        : 'could not connect (the link works once, for a short time: make a new one)', 'disconnected'));
    rfb.addEventListener('desktopname', (e) => { document.title = e.detail.name + ' - Corral VNC console'; });
    window.corralRfb = rfb;
}
