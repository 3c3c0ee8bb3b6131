import { readdir, readFile } from 'node:fs/promises'
import { dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'

// The shape the house keeps: imports run one way (no cycle, type imports included), and plugins are wiring.
const SRC = fileURLToPath(new URL('../src', import.meta.url))

async function sources (dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true })
  const nested = await Promise.all(entries.map(async (entry) => entry.isDirectory() ? await sources(join(dir, entry.name)) : entry.name.endsWith('.ts') ? [join(dir, entry.name)] : []))
  return nested.flat()
}

const files = await sources(SRC)
const texts = new Map(await Promise.all(files.map(async (file) => [file, await readFile(file, 'utf8')] as const)))
const name = (file: string): string => relative(SRC, file)

t.test('no import cycle anywhere in src', async (t) => {
  const edges = new Map(files.map((file) => {
    const targets = [...(texts.get(file) as string).matchAll(/^(?:import|export)\s[^'"]*?from\s+'(\.{1,2}\/[^']+)'/gm)]
      .map((match) => resolve(dirname(file), (match[1] as string).replace(/\.js$/, '.ts')))
    return [file, targets]
  }))
  const cycles: string[] = []
  const state = new Map<string, 'open' | 'done'>()
  const visit = (file: string, path: string[]): void => {
    if (state.get(file) === 'done') return
    if (state.get(file) === 'open') { cycles.push([...path.slice(path.indexOf(file)), file].map(name).join(' -> ')); return }
    state.set(file, 'open')
    for (const target of edges.get(file) ?? []) visit(target, [...path, file])
    state.set(file, 'done')
  }
  for (const file of files) visit(file, [])
  t.same(cycles, [], 'import cycles')
  t.ok(edges.size > 40, `read ${edges.size} files`)
})

t.test('every plugin is wiring: at most 60 lines of code', async (t) => {
  for (const file of files.filter((file) => name(file).startsWith('plugins/'))) {
    const code = (texts.get(file) as string).split('\n').filter((line) => !/^\s*($|\/\/|\/\*|\*)/.test(line)).length
    t.ok(code <= 60, `${name(file)}: ${code} lines of code`)
  }
})

// Each import of a file in src, as [importer, imported], both relative to src.
const imports = files.flatMap((file) => [...(texts.get(file) as string).matchAll(/^(?:import|export)\s[^'"]*?from\s+'(\.{1,2}\/[^']+)'/gm)]
  .map((match) => [name(file), name(resolve(dirname(file), (match[1] as string).replace(/\.js$/, '.ts')))] as const))

t.test('lib imports nothing above it: no schemas, plugins or routes', async (t) => {
  const upward = imports.filter(([from, to]) => from.startsWith('lib/') && !to.startsWith('lib/'))
  t.same(upward, [], 'imports from lib into the layers that use it')
  t.ok(imports.some(([from]) => from.startsWith('lib/')), 'lib has imports to check')
})

t.test('a system of lib is reached from outside through its index.ts', async (t) => {
  const system = (path: string): string | undefined => /^lib\/([^/]+)\//.exec(path)?.[1]
  const around = imports.filter(([from, to]) => system(to) !== undefined && system(from) !== system(to) && !to.endsWith('/index.ts'))
  t.same(around, [], 'imports past a system\'s face')
  const systems = new Set(files.map((file) => system(name(file))).filter((found) => found !== undefined))
  t.same([...systems].sort(), ['augment', 'coze', 'http', 'ops', 'redis', 'relay', 'tracing'], 'the systems of lib')
  t.same(files.filter((file) => /^lib\/[^/]+\.ts$/.test(name(file))).map(name), [], 'no file of lib outside a system')
})
