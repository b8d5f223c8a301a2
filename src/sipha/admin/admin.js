// Shared by the status pages of sipha's roles: the admin token (kept for this tab only)
// and JSON requests to the admin API with it. The pages hold no data themselves: every
// value comes from the API, which checks the token.
const token = {
  get() { return sessionStorage.getItem('sipha-admin-token') || ''; },
  set(v) { if (v) sessionStorage.setItem('sipha-admin-token', v); else sessionStorage.removeItem('sipha-admin-token'); },
};
function esc(s) { return String(s).replace(/[&<>"]/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'}[c])); }
async function api(path, body) {
  const headers = {'Accept': 'application/json'};
  const t = token.get();
  if (t) headers['Authorization'] = 'Bearer ' + t;
  const init = {headers, cache: 'no-store'};
  if (body !== undefined) {
    init.method = 'POST';
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const data = await r.json().catch(() => ({error: r.statusText}));
  if (!r.ok) throw new Error(r.status === 401 ? 'this admin API needs its token (enter it above)' : `HTTP ${r.status}: ${data.error || ''}`);
  return data;
}
function tokenBox(el) {
  el.innerHTML = '<label>admin token <input id="token" type="password" autocomplete="off" size="24"></label> <button id="token-save">use</button>';
  document.getElementById('token').value = token.get();
  document.getElementById('token-save').onclick = () => { token.set(document.getElementById('token').value.trim()); refresh(); };
}
