// The console's only script: served by the service (the CSP allows no inline script). The pages work without it;
// it refreshes the page's content every few seconds while the page is visible and nothing in it has the focus.
'use strict'
;(function () {
  const main = document.getElementById('main')
  if (main === null || main.dataset.refresh === undefined) return
  const every = Math.max(2, Number(main.dataset.refresh)) * 1000
  let busy = false
  async function refresh () {
    const active = document.activeElement
    if (busy || document.visibilityState !== 'visible' || (active !== null && active !== document.body && main.contains(active))) return
    busy = true
    try {
      const answer = await fetch(window.location.href, { credentials: 'same-origin', headers: { accept: 'text/html' }, cache: 'no-store' })
      if (answer.status === 401) { window.location.reload(); return }
      if (!answer.ok) return
      const next = new DOMParser().parseFromString(await answer.text(), 'text/html').getElementById('main')
      if (next !== null) {
        // A notice answered an action once: it does not come back with a refresh.
        main.replaceChildren(...next.childNodes)
        document.dispatchEvent(new CustomEvent('console:refreshed'))
      }
    } catch (err) {
      // Offline for a moment: the next turn tries again.
    } finally {
      busy = false
    }
  }
  setInterval(refresh, every)
  document.addEventListener('visibilitychange', function () { if (document.visibilityState === 'visible') refresh() })
})()
