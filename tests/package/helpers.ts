/**
 * Shared by the packaging tests: an environment for running npm as a user would,
 * without the npm_* variables of the `npm test` that started vitest (they name
 * this checkout's package and would leak into a consumer's npm).
 */
export function npmEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('npm_') && k !== 'INIT_CWD'));
}
