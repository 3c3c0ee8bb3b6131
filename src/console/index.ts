/**
 * The console: web pages for the people who run the service (GET /console). Who may sign in and the session a
 * sign-in gives (`access.ts`), the pages (`pages.ts`, written through `html.ts`, which escapes every value), and
 * the routes, which read and act through the queue's own job operations (`routes.ts`). Its script and style
 * sheet are in public/console. src/plugins/console.ts wires it.
 */
export { type ConsoleCaller, createConsoleAccess } from './access.js'
export { consoleRoutes, type ConsoleRoutesOptions, SESSION_COOKIE } from './routes.js'
