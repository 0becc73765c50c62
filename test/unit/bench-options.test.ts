import { InvalidArgumentError } from 'commander';
import { exportIndexCommand } from '../../bench/export-index';
import { benchCommand, integer, integerList, nameList, parseBenchOptions } from '../../bench/options';

describe('benchmark options (bench/options.ts)', () => {
  it('parses whole numbers in range, and lists of them', () => {
    expect(integer()('0')).toBe(0);
    expect(integer(1, 2)('2')).toBe(2);
    expect(integerList(1)('1,2,64')).toEqual([1, 2, 64]);
    for (const bad of ['', '-1', '1.5', '1e3', 'x', ' ']) expect(() => integer()(bad)).toThrow(InvalidArgumentError);
    expect(() => integer(1)('0')).toThrow('expected a whole number >= 1, got "0"');
    expect(() => integer(1, 2)('3')).toThrow('expected a whole number from 1 to 2, got "3"');
    expect(() => integerList()('1,,2')).toThrow(InvalidArgumentError);
  });

  it('parses a list of known names, naming the valid ones otherwise', () => {
    const modes = nameList(['group', 'naive-vm'] as const);
    expect(modes('naive-vm,group')).toEqual(['naive-vm', 'group']);
    expect(() => modes('group,naive')).toThrow('unknown "naive", expected one of group, naive-vm');
  });

  it('gives defaults and parsed values under camelCase names', () => {
    const command = () =>
      benchCommand('x', 'test')
        .option('--rounds <n>', 'rounds', integer(1), 10)
        .option('--gap-ms <ms,...>', 'gaps', integerList(), [300])
        .option('--no-big', 'no big disks')
        .option('--out <file>', 'output');
    expect(parseBenchOptions(command(), ['node', 'x'])).toEqual({ rounds: 10, gapMs: [300], big: true });
    expect(parseBenchOptions(command(), ['node', 'x', '--rounds', '2', '--gap-ms', '0,5', '--no-big'])).toEqual({
      rounds: 2,
      gapMs: [0, 5],
      big: false,
    });
  });

  it('export-index (bench/export-index.ts): defaults, values, and bounds', () => {
    expect(parseBenchOptions(exportIndexCommand(), ['node', 'x'])).toMatchObject({
      chunks: 300_000,
      points: 500,
      change: 8,
      rounds: 3,
    });
    expect(
      parseBenchOptions(exportIndexCommand(), ['node', 'x', '--chunks', '2000', '--points', '40', '--rounds', '1']),
    ).toMatchObject({ chunks: 2000, points: 40, rounds: 1 });
    const quiet = () => exportIndexCommand().configureOutput({ writeErr: () => undefined });
    expect(() => quiet().parse(['node', 'x', '--chunks', '5'])).toThrow(/whole number from 1000 to 10000000/);
    expect(() => quiet().parse(['node', 'x', '--points', '0'])).toThrow(/whole number from 1/);
  });
});
