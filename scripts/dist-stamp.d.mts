export declare const STAMP: string;
export declare function sourceHash(root: string): string;
export declare function distIsFresh(root: string): boolean;
